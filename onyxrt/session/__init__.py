"""The public session API: InferenceSession, options, OrtValue, IOBinding."""
