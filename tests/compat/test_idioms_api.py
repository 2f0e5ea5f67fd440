"""OrtValue, IOBinding and module-level API idioms: DLPack, OrtValueVector runs, memory infos,
devices, sparse tensors, external initializers, load cancellation, thread pools, dir() coverage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import onnxruntime.capi._pybind_state  # noqa: F401 - reached as ort.capi._pybind_state below
import pytest
from onnx import TensorProto, helper

import onyxrt
import onyxrt.capi._pybind_state  # noqa: F401

import models
from idioms import assert_same

REPO = Path(__file__).resolve().parents[2]


def capi(ort):
    """The runtime's native module (``onnxruntime.capi._pybind_state``)."""
    return ort.capi._pybind_state


def session(ort, model: onnx.ModelProto, options=None):
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def vector(ort, *arrays):
    values = capi(ort).OrtValueVector()
    for array in arrays:
        values.push_back(ort.OrtValue.ortvalue_from_numpy(array)._ortvalue)
    return values


def cpu_device(ort):
    return ort.OrtDevice.make("cpu", 0)._get_c_device()


def sequence_model() -> onnx.ModelProto:
    return models.make_model(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["s"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [2])],
    )


@pytest.fixture()
def external_model(tmp_path):
    """The linear model with W and b stored in weights.bin; returns (path, proto without data, file bytes)."""
    path = tmp_path / "model.onnx"
    onnx.save_model(models.linear(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    proto = onnx.load(path, load_external_data=False)
    return str(path), proto, (tmp_path / "weights.bin").read_bytes()


X = np.array([[1.0, -2.0, 3.0, 0.5]], dtype=np.float32)
A = np.arange(6, dtype=np.float32).reshape(2, 3)
B = np.full((2, 3), 2.0, dtype=np.float32)

# ---------------------------------------------------------------------------------------------- DLPack


def test_numpy_from_dlpack_of_ortvalue_shares_memory():
    def idiom(ort):
        source = A.copy()
        array = np.from_dlpack(ort.OrtValue.ortvalue_from_numpy(source))
        return array, np.shares_memory(array, source), array.flags.writeable

    assert_same(idiom)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.uint8, np.int32, np.int64, np.uint64,
                                   np.bool_, np.float16])
def test_dlpack_device_and_dtype_round_trip(dtype):
    def idiom(ort):
        value = ort.OrtValue.ortvalue_from_numpy(np.ones((2, 2), dtype))
        return value.__dlpack_device__(), str(np.from_dlpack(value).dtype)

    assert_same(idiom)


def test_ortvalue_from_dlpack_writes_through_to_the_producer():
    def idiom(ort):
        source = A.copy()
        value = ort.OrtValue.from_dlpack(source)
        value.numpy()[0, 0] = 42.0
        return source[0, 0], value.shape(), value.data_type(), value.data_ptr() == source.ctypes.data

    assert_same(idiom)


def test_ortvalue_from_dlpack_of_a_capsule():
    def idiom(ort):
        source = A.copy()  # kept alive: the OrtValue borrows its memory
        return ort.OrtValue.from_dlpack(source.__dlpack__()).numpy()

    assert_same(idiom)


def test_ortvalue_from_dlpack_of_an_ortvalue():
    def idiom(ort):
        array = B.copy()
        source = ort.OrtValue.ortvalue_from_numpy(array)
        value = ort.OrtValue.from_dlpack(source)
        return value.numpy(), value.data_ptr() == source.data_ptr()

    assert_same(idiom)


def test_read_only_array_exports_through_dlpack():
    def idiom(ort):
        source = np.arange(3, dtype=np.float32)
        source.flags.writeable = False
        return np.from_dlpack(ort.OrtValue.ortvalue_from_numpy(source))

    assert_same(idiom)


@pytest.mark.parametrize("bad", [
    pytest.param(lambda: 3, id="int"),
    pytest.param(lambda: [1, 2], id="list"),
    pytest.param(lambda: np.arange(6, dtype=np.float32).reshape(2, 3).T, id="non_contiguous"),
    pytest.param(lambda: np.array([1j], dtype=np.complex128), id="complex"),
    pytest.param(lambda: np.broadcast_to(np.float32(1), (3,)), id="read_only_producer"),
])
def test_ortvalue_from_dlpack_errors(bad):
    assert_same(lambda ort: ort.OrtValue.from_dlpack(bad()))


def test_dlpack_capsule_consumed_twice():
    def idiom(ort):
        capsule = A.copy().__dlpack__()
        ort.OrtValue.from_dlpack(capsule)
        return ort.OrtValue.from_dlpack(capsule)

    assert_same(idiom)


def test_numpy_from_dlpack_with_copy_keyword_is_refused_as_by_onnxruntime():
    # onnxruntime's __dlpack__ takes only ``stream``: numpy's newer keywords raise TypeError
    assert_same(lambda ort: np.from_dlpack(ort.OrtValue.ortvalue_from_numpy(A.copy()), copy=True))


def test_dlpack_of_a_sequence_fails():
    def idiom(ort):
        value = session(ort, sequence_model()).run_with_ort_values(
            None, {"x": ort.OrtValue.ortvalue_from_numpy(np.ones(2, np.float32))})[0]
        return value.__dlpack__()

    assert_same(idiom)


def test_numpy_asarray_of_ortvalue():
    def idiom(ort):
        source = A.copy()
        value = ort.OrtValue.ortvalue_from_numpy(source)
        return np.asarray(value), np.shares_memory(np.asarray(value), source), np.asarray(value, dtype=np.float64)

    assert_same(idiom)


# ---------------------------------------------------------------------------------------------- shape and type


@pytest.mark.parametrize("shape, element_type", [
    ([2, 3], np.float32), ((2, 3), np.int64), ([], np.float64), ([0, 4], np.int32), ([3], np.bool_),
    ([4], np.float16), ([2, 2], TensorProto.BFLOAT16), ([5], TensorProto.INT4), ([4], TensorProto.INT8),
    ([3], "float32"), (np.array([2, 3]), np.uint8),
])
def test_ortvalue_from_shape_and_type(shape, element_type):
    def idiom(ort):
        value = ort.OrtValue.ortvalue_from_shape_and_type(shape, element_type)
        return (value.shape(), value.data_type(), value.element_type(), value.tensor_size_in_bytes(),
                value.device_name(), value.is_tensor(), value.has_value())

    assert_same(idiom)


@pytest.mark.parametrize("args", [
    pytest.param(([2], np.object_), id="object"), pytest.param(([2], TensorProto.STRING), id="string_enum"),
    pytest.param(([2], 99), id="unknown_enum"), pytest.param(([2], np.complex64), id="complex"),
    pytest.param(([-1, 2], np.float32), id="negative_dim"), pytest.param(([2.0, 3], np.float32), id="float_dim"),
    pytest.param(([2],), id="no_element_type"), pytest.param(([2], np.float32, "cuda", 0), id="cuda"),
    pytest.param(([2], np.float32, "CPU", 0), id="upper_case_cpu"), pytest.param(([2], np.float32, "tpu"), id="tpu"),
])
def test_ortvalue_from_shape_and_type_errors(args):
    assert_same(lambda ort: ort.OrtValue.ortvalue_from_shape_and_type(*args))


def test_ortvalue_from_shape_and_type_with_memory_info_allocates_there_in_onyxrt():
    """onnxruntime needs a shared allocator registered for the memory info (EP devices); onyxrt allocates
    on the device the memory info names (docs/compatibility.md)."""
    info = onyxrt.OrtMemoryInfo("Cpu", onyxrt.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, onyxrt.OrtMemType.DEFAULT)
    value = onyxrt.OrtValue.ortvalue_from_shape_and_type([2, 2], np.int16, memory_info=info)
    assert (value.shape(), value.data_type(), value.device_name()) == ([2, 2], "tensor(int16)", "cpu")
    with pytest.warns(UserWarning, match="ignored when memory_info"):
        onyxrt.OrtValue.ortvalue_from_shape_and_type([1], np.int16, "cpu", 1, memory_info=info)


def test_tensor_size_in_bytes_of_fed_and_run_values():
    def idiom(ort):
        value = ort.OrtValue.ortvalue_from_numpy(np.arange(12, dtype=np.float64).reshape(3, 4).T)
        output = session(ort, models.linear()).run_with_ort_values(None, {"x": ort.OrtValue.ortvalue_from_numpy(X)})[0]
        return value.tensor_size_in_bytes(), output.tensor_size_in_bytes()

    assert_same(idiom)


@pytest.mark.parametrize("method", ["tensor_size_in_bytes", "shape", "data_ptr", "device_name"])
def test_tensor_only_methods_on_a_sequence(method):
    def idiom(ort):
        value = session(ort, sequence_model()).run_with_ort_values(
            None, {"x": ort.OrtValue.ortvalue_from_numpy(np.ones(2, np.float32))})[0]
        return value.is_tensor_sequence(), value.data_type(), getattr(value, method)()

    assert_same(idiom)


def test_sequence_numpy_is_a_list_in_onyxrt():
    """onnxruntime's OrtValue.numpy() refuses a sequence; onyxrt's returns its list of arrays (docs/compatibility.md)."""
    value = session(onyxrt, sequence_model()).run_with_ort_values(
        None, {"x": onyxrt.OrtValue.ortvalue_from_numpy(np.ones(2, np.float32))})[0]
    assert value.is_tensor_sequence()
    assert [array.tolist() for array in value.numpy()] == [[1.0, 1.0], [1.0, 1.0]]


def test_session_create_ortvalue_from_shape_and_type():
    def idiom(ort):
        sess = session(ort, models.linear())
        value = sess.create_ortvalue_from_shape_and_type([2, 3], np.float32, "cpu")
        return value.shape(), sess.create_ortvalue_from_shape_and_type([1], TensorProto.FLOAT, "cpu").data_type()

    assert_same(idiom)


def test_session_create_ortvalue_needs_a_device_type():
    assert_same(lambda ort: session(ort, models.linear()).create_ortvalue_from_shape_and_type([2], np.float32))


# ---------------------------------------------------------------------------------------------- OrtValueVector runs


def test_run_with_ortvaluevector_outputs():
    def idiom(ort):
        fetches = capi(ort).OrtValueVector()
        session(ort, models.two_outputs()).run_with_ortvaluevector(
            ort.RunOptions(), ["a", "b"], vector(ort, A, B), ["product", "sum"], fetches,
            [cpu_device(ort), cpu_device(ort)])
        return len(fetches), [value.numpy() for value in fetches], fetches.element_type_at(0)

    assert_same(idiom)


def test_run_with_ortvaluevector_writes_preallocated_fetches():
    def idiom(ort):
        target = ort.OrtValue.ortvalue_from_shape_and_type([2, 3], np.float32)
        fetches = capi(ort).OrtValueVector()
        fetches.push_back(target._ortvalue)
        session(ort, models.two_outputs()).run_with_ortvaluevector(
            ort.RunOptions(), ["a", "b"], vector(ort, A, B), ["sum"], fetches, [cpu_device(ort)])
        return target.numpy(), len(fetches)

    assert_same(idiom)


def test_run_with_ortvaluevector_replaces_previous_fetches():
    def idiom(ort):
        sess, fetches = session(ort, models.two_outputs()), capi(ort).OrtValueVector()
        for _ in range(2):
            sess.run_with_ortvaluevector(ort.RunOptions(), ["a", "b"], vector(ort, A, B), ["sum"], fetches,
                                         [cpu_device(ort)])
        return len(fetches), ort.OrtValue(fetches[0]).numpy()

    assert_same(idiom)


@pytest.mark.parametrize("case", ["feed_length", "fetch_length", "no_fetch", "bad_input", "bad_output", "terminate",
                                  "wrong_type", "none_run_options", "list_feeds", "wrapper_device", "extra_devices"])
def test_run_with_ortvaluevector_errors(case):
    def idiom(ort):
        sess, device = session(ort, models.two_outputs()), cpu_device(ort)
        run_options, names, feeds = ort.RunOptions(), ["a", "b"], vector(ort, A, B)
        fetch_names, fetches, devices = ["sum"], capi(ort).OrtValueVector(), [device]
        if case == "feed_length":
            feeds = vector(ort, A)
        elif case == "fetch_length":
            fetches = vector(ort, A, B)
        elif case == "no_fetch":
            fetch_names, devices = [], []
        elif case == "bad_input":
            names = ["a", "zz"]
        elif case == "bad_output":
            fetch_names = ["zz"]
        elif case == "terminate":
            run_options.terminate = True
        elif case == "wrong_type":
            feeds = vector(ort, A, B.astype(np.float64))
        elif case == "none_run_options":
            run_options = None
        elif case == "list_feeds":
            feeds = list(feeds)
        elif case == "wrapper_device":
            devices = [ort.OrtDevice.make("cpu", 0)]
        elif case == "extra_devices":
            devices = [device, device, device]
        sess.run_with_ortvaluevector(run_options, names, feeds, fetch_names, fetches, devices)
        return [value.numpy() for value in fetches]

    assert_same(idiom)


def test_ortvaluevector_access_and_dlpack():
    def idiom(ort):
        values = vector(ort, A, np.arange(3, dtype=np.int64))
        capsules = values.to_dlpacks(None)
        return (len(values), bool(values), values.element_type_at(1), np.from_dlpack(ort.OrtValue(values[0])),
                len(capsules), [ort.OrtValue.from_dlpack(c).numpy() for c in capsules],
                values.to_dlpacks(lambda capsule: ort.OrtValue.from_dlpack(capsule).numpy()),
                ort.OrtValue.from_dlpack(values.dlpack_at(1)).numpy())

    assert_same(idiom)


def test_ortvaluevector_push_back_batch_wraps_memory():
    def idiom(ort):
        first, second = A.copy(), np.arange(4, dtype=np.int64)
        values = capi(ort).OrtValueVector()
        values.push_back_batch([first, second], [first.ctypes.data, second.ctypes.data], [first.dtype, second.dtype],
                               [list(first.shape), list(second.shape)], [cpu_device(ort), cpu_device(ort)])
        first[0, 0] = 7.0
        return len(values), [ort.OrtValue(value).numpy() for value in values], values.element_type_at(1)

    assert_same(idiom)


@pytest.mark.parametrize("index", [2, -1])
def test_ortvaluevector_index_errors(index):
    assert_same(lambda ort: vector(ort, A, B)[index])


def test_ortvaluevector_push_back_of_a_capsule():
    def idiom(ort):
        values = capi(ort).OrtValueVector()
        values.push_back(A.copy().__dlpack__())
        return len(values), ort.OrtValue(values[0]).numpy()

    assert_same(idiom)


def test_iobinding_outputs_as_ortvaluevector():
    def idiom(ort):
        sess = session(ort, models.two_outputs())
        binding = sess.io_binding()
        before = len(binding.get_outputs_as_ortvaluevector())
        binding.bind_cpu_input("a", A)
        binding.bind_cpu_input("b", B)
        binding.bind_output("sum")
        binding.bind_output("product")
        sess.run_with_iobinding(binding)
        outputs = binding.get_outputs_as_ortvaluevector()
        return before, len(outputs), [value.numpy() for value in outputs], [outputs[i].element_type() for i in range(2)]

    assert_same(idiom)


def test_copy_tensors_with_mismatched_lists():
    def idiom(ort):
        value = ort.OrtValue.ortvalue_from_numpy(np.ones(3, np.float32))
        return ort.copy_tensors([value, value], [value])

    assert_same(idiom)


def test_onyxrt_copy_tensors_copies_between_host_tensors():
    """onnxruntime's CPU build has no CPU-to-CPU data transfer for copy_tensors (RuntimeError); onyxrt copies."""
    source = onyxrt.OrtValue.ortvalue_from_numpy(A.copy())
    target = onyxrt.OrtValue.ortvalue_from_shape_and_type([2, 3], np.float32)
    onyxrt.copy_tensors([source], [target])
    np.testing.assert_array_equal(target.numpy(), A)
    with pytest.raises(RuntimeError, match="does not match"):
        onyxrt.copy_tensors([source], [onyxrt.OrtValue.ortvalue_from_shape_and_type([3], np.float32)])


# ---------------------------------------------------------------------------------------------- memory infos, devices


def memory_info_fields(info):
    return (info.name, info.device_id, int(info.mem_type), info.mem_type.name, int(info.allocator_type),
            int(info.device_mem_type), info.device_vendor_id)


@pytest.mark.parametrize("arena", [True, False])
def test_session_memory_infos(arena):
    def idiom(ort):
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = arena
        sess = session(ort, models.two_outputs(), options)
        inputs, outputs = sess.get_input_memory_infos(), sess.get_output_memory_infos()
        return ([memory_info_fields(info) for info in inputs + outputs], inputs[0] == outputs[1],
                len(session(ort, models.gather()).get_input_memory_infos()))

    assert_same(idiom)


@pytest.mark.parametrize("name", ["Cpu", "Cuda", "CudaPinned", "DML", "WebGPU_Buffer", "Hip", "QnnHtpShared"])
def test_ort_memory_info_constructor(name):
    def idiom(ort):
        info = ort.OrtMemoryInfo(name, ort.OrtAllocatorType.ORT_DEVICE_ALLOCATOR, 1, ort.OrtMemType.CPU_INPUT)
        return memory_info_fields(info)

    assert_same(idiom)


@pytest.mark.parametrize("args", [
    pytest.param(("Cann", "arena", 0, "default"), id="unknown_name"),
    pytest.param(("cpu", "arena", 0, "default"), id="lower_case"),
    pytest.param(("Cpu", 1, 0, 0), id="int_enums"),
])
def test_ort_memory_info_constructor_errors(args):
    def idiom(ort):
        name, allocator, device_id, mem_type = args
        allocator = ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR if allocator == "arena" else allocator
        mem_type = ort.OrtMemType.DEFAULT if mem_type == "default" else mem_type
        return ort.OrtMemoryInfo(name, allocator, device_id, mem_type)

    assert_same(idiom)


def test_ort_memory_info_create_v2_and_identity_equality():
    def idiom(ort):
        info = ort.OrtMemoryInfo.create_v2("Foo", ort.OrtMemoryInfoDeviceType.GPU, 0x10DE, 1,
                                           ort.OrtDeviceMemoryType.HOST_ACCESSIBLE, 0,
                                           ort.OrtAllocatorType.ORT_DEVICE_ALLOCATOR)
        made = [ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                for _ in range(2)]
        return memory_info_fields(info), made[0] == made[1], made[0] == made[0]

    assert_same(idiom)


@pytest.mark.parametrize("args", [("cpu", 0), ("cuda", 1), ("gpu", 0, 0x10DE), ("npu", 2, 0x5143), ("dml", 0),
                                  ("cann", 0), ("webgpu", 0)])
def test_ort_device_make(args):
    def idiom(ort):
        device = ort.OrtDevice.make(*args)
        native = device._get_c_device()
        return (device.device_type(), device.device_id(), device.device_vendor_id(), device.device_mem_type(),
                native.device_type(), native.vendor_id(), device == ort.OrtDevice.make(*args))

    assert_same(idiom)


@pytest.mark.parametrize("case", ["unknown_name", "upper_case", "not_native"])
def test_ort_device_errors(case):
    def idiom(ort):
        if case == "unknown_name":
            return ort.OrtDevice.make("tpu", 0)
        if case == "upper_case":
            return ort.OrtDevice.make("CUDA", 0)
        return ort.OrtDevice(1)

    assert_same(idiom)


def test_native_ort_device():
    def idiom(ort):
        native = capi(ort).OrtDevice
        three, four = native(native.cuda(), native.default_memory(), 3), native(1, 0, 0x10DE, 2)
        codes = (native.cpu(), native.cuda(), native.dml(), native.cann(), native.gpu(), native.npu(), native.fpga(),
                 native.webgpu(), native.default_memory())
        return (codes, (three.device_type(), three.device_id(), three.vendor_id(), three.mem_type()),
                (four.device_type(), four.device_id(), four.vendor_id()), ort.OrtDevice(four).device_id())

    assert_same(idiom)


def test_device_enums():
    def idiom(ort):
        return [(type_name, sorted((member.name, int(member.value))
                                   for member in getattr(ort, type_name).__members__.values()))
                for type_name in ("OrtMemoryInfoDeviceType", "OrtDeviceMemoryType", "OrtDeviceVendorId",
                                  "OrtSparseFormat", "OrtAllocatorType", "OrtMemType")]

    assert_same(idiom)


# ---------------------------------------------------------------------------------------------- sparse tensors

SHAPE = np.array([3, 4], dtype=np.int64)
VALUES = np.array([1.0, 2.0, 3.0], dtype=np.float32)


def test_sparse_coo_from_numpy():
    def idiom(ort):
        values, indices = VALUES.copy(), np.array([1, 5, 11], dtype=np.int64)
        sparse = ort.SparseTensor.sparse_coo_from_numpy(SHAPE, values, indices, ort.OrtDevice.make("cpu", 0))
        view = sparse.as_coo_view()
        return (sparse.values(), np.shares_memory(sparse.values(), values), view.indices(),
                np.shares_memory(view.indices(), indices), int(sparse.format()), sparse.format().name,
                sparse.dense_shape(), sparse.data_type(), sparse.device_name())

    assert_same(idiom)


@pytest.mark.parametrize("indices", [np.array([[0, 1], [1, 1], [2, 3]]), np.array([0, 1, 1, 1, 2, 3]),
                                     np.array([1, 5, 11], dtype=np.int32)])
def test_sparse_coo_index_forms(indices):
    def idiom(ort):
        sparse = ort.SparseTensor.sparse_coo_from_numpy([3, 4], VALUES, indices, ort.OrtDevice.make("cpu", 0))
        return sparse.as_coo_view().indices()

    assert_same(idiom)


def test_sparse_coo_of_strings():
    def idiom(ort):
        sparse = ort.SparseTensor.sparse_coo_from_numpy([3, 4], np.array(["a", "bb", "c"]), np.array([1, 5, 11]),
                                                        ort.OrtDevice.make("cpu", 0))
        return sparse.data_type(), sparse.values()

    assert_same(idiom)


def test_sparse_csr_from_numpy():
    def idiom(ort):
        sparse = ort.SparseTensor.sparse_csr_from_numpy(SHAPE, VALUES, np.array([1, 1, 3]), np.array([0, 1, 2, 3]),
                                                        ort.OrtDevice.make("cpu", 0))
        view = sparse.as_csrc_view()
        return view.inner(), view.outer(), int(sparse.format()), sparse.dense_shape(), sparse.values()

    assert_same(idiom)


@pytest.mark.parametrize("case", ["coo_bad_length", "coo_2d_values", "coo_non_contiguous", "coo_object_values",
                                  "csr_3d", "csr_bad_outer", "coo_as_csr", "csr_as_coo", "blocksparse", "to_cuda",
                                  "cuda_device", "float_shape"])
def test_sparse_tensor_errors(case):
    def idiom(ort):
        cpu = ort.OrtDevice.make("cpu", 0)
        coo = lambda values, indices=np.array([1, 5, 11]), shape=SHAPE, device=cpu: \
            ort.SparseTensor.sparse_coo_from_numpy(shape, values, indices, device)  # noqa: E731
        csr = lambda shape=SHAPE, outer=np.array([0, 1, 2, 3]): ort.SparseTensor.sparse_csr_from_numpy(  # noqa: E731
            shape, VALUES, np.array([1, 1, 3]), outer, cpu)
        actions = {
            "coo_bad_length": lambda: coo(VALUES, np.array([1, 2])),
            "coo_2d_values": lambda: coo(VALUES.reshape(3, 1)),
            "coo_non_contiguous": lambda: coo(np.arange(6, dtype=np.float32)[::2]),
            "coo_object_values": lambda: coo(np.array(["a", "b", "c"], dtype=object)),
            "csr_3d": lambda: csr(np.array([2, 3, 4])),
            "csr_bad_outer": lambda: csr(outer=np.array([0, 1, 3])),
            "coo_as_csr": lambda: coo(VALUES).as_csrc_view(),
            "csr_as_coo": lambda: csr().as_coo_view(),
            "blocksparse": lambda: coo(VALUES).as_blocksparse_view(),
            "to_cuda": lambda: coo(VALUES).to_cuda(ort.OrtDevice.make("cuda", 0)),
            "cuda_device": lambda: coo(VALUES, device=ort.OrtDevice.make("cuda", 0)),
            "float_shape": lambda: coo(VALUES, shape=np.array([3.0, 4.0])),
        }
        return actions[case]()

    assert_same(idiom)


@pytest.mark.parametrize("method", ["is_sparse_tensor", "is_tensor", "has_value", "is_tensor_sequence", "data_type",
                                    "shape", "element_type", "device_name", "numpy", "tensor_size_in_bytes",
                                    "data_ptr", "__dlpack__"])
def test_ortvalue_holding_a_sparse_tensor(method):
    def idiom(ort):
        sparse = ort.SparseTensor.sparse_coo_from_numpy(SHAPE, VALUES, np.array([1, 5, 11]), ort.OrtDevice.make("cpu", 0))
        value = ort.OrtValue.ort_value_from_sparse_tensor(sparse)
        return getattr(value, method)(), value.as_sparse_tensor().values()

    assert_same(idiom)


def test_as_sparse_tensor_of_a_dense_value_fails():
    assert_same(lambda ort: ort.OrtValue.ortvalue_from_numpy(VALUES).as_sparse_tensor())


def test_sparse_ortvalue_fed_to_a_dense_input():
    def idiom(ort):
        sparse = ort.SparseTensor.sparse_coo_from_numpy([1, 4], VALUES, np.array([0, 1, 3]), ort.OrtDevice.make("cpu", 0))
        return session(ort, models.linear()).run_with_ort_values(
            None, {"x": ort.OrtValue.ort_value_from_sparse_tensor(sparse)})

    assert_same(idiom)


def sparse_matmul_model(**attributes) -> onnx.ModelProto:
    """y = SparseToDenseMatMul(s, d): s a sparse float [3, 4] input, d dense (com.microsoft)."""
    sparse_type = onnx.TypeProto()
    sparse_type.sparse_tensor_type.elem_type = TensorProto.FLOAT
    for dim in (3, 4):
        sparse_type.sparse_tensor_type.shape.dim.add().dim_value = dim
    graph = helper.make_graph(
        [helper.make_node("SparseToDenseMatMul", ["s", "d"], ["y"], domain="com.microsoft", **attributes)], "g",
        [helper.make_value_info("s", sparse_type), helper.make_tensor_value_info("d", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("layout", ["csr", "coo_pairs"])
@pytest.mark.parametrize("attributes", [{}, {"alpha": 2.0}, {"transB": 1}])
def test_sparse_tensor_fed_to_sparse_to_dense_matmul(layout, attributes):
    def idiom(ort):
        cpu, dense = ort.OrtDevice.make("cpu", 0), np.arange(8, dtype=np.float32).reshape(4, 2)
        if layout == "csr":
            sparse = ort.SparseTensor.sparse_csr_from_numpy(SHAPE, VALUES, np.array([1, 1, 3]), np.array([0, 1, 2, 3]), cpu)
        else:
            sparse = ort.SparseTensor.sparse_coo_from_numpy(SHAPE, VALUES, np.array([[0, 1], [1, 1], [2, 3]]), cpu)
        feeds = {"s": ort.OrtValue.ort_value_from_sparse_tensor(sparse),
                 "d": ort.OrtValue.ortvalue_from_numpy(dense.T.copy() if attributes.get("transB") else dense)}
        sess = session(ort, sparse_matmul_model(**attributes))
        return [(arg.name, arg.type, arg.shape) for arg in sess.get_inputs()], sess.run_with_ort_values(None, feeds)[0].numpy()

    assert_same(idiom)


def test_dense_tensor_fed_to_a_sparse_input():
    def idiom(ort):
        feeds = {"s": ort.OrtValue.ortvalue_from_numpy(np.zeros((3, 4), np.float32)),
                 "d": ort.OrtValue.ortvalue_from_numpy(np.zeros((4, 2), np.float32))}
        return session(ort, sparse_matmul_model()).run_with_ort_values(None, feeds)

    assert_same(idiom)


# ---------------------------------------------------------------------------------------------- external initializers


@pytest.mark.parametrize("source", ["path", "bytes"])
def test_external_initializers_override_weights(external_model, source):
    path, proto, _ = external_model

    def idiom(ort):
        options = ort.SessionOptions()
        options.add_external_initializers(["W", "b"], [ort.OrtValue.ortvalue_from_numpy(np.full((4, 3), 2, np.float32)),
                                                       ort.OrtValue.ortvalue_from_numpy(np.zeros(3, np.float32))])
        model = path if source == "path" else proto.SerializeToString()
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(None, {"x": X})

    assert_same(idiom)


@pytest.mark.parametrize("case", ["not_external", "unknown_name", "wrong_shape", "wrong_dtype"])
def test_external_initializers_refused_at_session_creation(external_model, case):
    _, proto, _ = external_model
    name, array, model = "W", np.ones((4, 3), np.float32), proto
    if case == "not_external":
        model = models.linear()
    elif case == "unknown_name":
        name = "nope"
    elif case == "wrong_shape":
        array = np.ones((3, 3), np.float32)
    elif case == "wrong_dtype":
        array = np.ones((4, 3), np.float64)

    def idiom(ort):
        options = ort.SessionOptions()
        options.add_external_initializers([name, "b"], [ort.OrtValue.ortvalue_from_numpy(array),
                                                        ort.OrtValue.ortvalue_from_numpy(np.zeros(3, np.float32))])
        return session(ort, model, options).run(None, {"x": X})

    assert_same(idiom)


@pytest.mark.parametrize("case", ["duplicate", "lengths", "tuples", "numpy_values"])
def test_add_external_initializers_argument_errors(case):
    def idiom(ort):
        options, value = ort.SessionOptions(), ort.OrtValue.ortvalue_from_numpy(np.ones(3, np.float32))
        if case == "duplicate":
            options.add_external_initializers(["b"], [value])
            options.add_external_initializers(["b"], [value])
        elif case == "lengths":
            options.add_external_initializers(["b", "W"], [value])
        elif case == "tuples":
            options.add_external_initializers(("b",), (value,))
        else:
            options.add_external_initializers(["b"], [np.ones(3, np.float32)])

    assert_same(idiom)


@pytest.mark.parametrize("case", ["whole_file", "numpy_buffer", "dot_slash_name", "wrong_name", "short_length",
                                  "duplicate", "mismatched_lists", "str_buffer"])
def test_external_initializers_from_files_in_memory(external_model, case):
    _, proto, data = external_model

    def idiom(ort):
        options = ort.SessionOptions()
        names, buffers, lengths = ["weights.bin"], [data], [len(data)]
        if case == "numpy_buffer":
            buffers = [np.frombuffer(data, np.uint8)]
        elif case == "dot_slash_name":
            names = ["./weights.bin"]
        elif case == "wrong_name":
            names = ["other.bin"]
        elif case == "short_length":
            lengths = [len(data) - 4]
        elif case == "duplicate":
            options.add_external_initializers_from_files_in_memory(names, buffers, lengths)
        elif case == "mismatched_lists":
            names = ["weights.bin", "other.bin"]
        elif case == "str_buffer":
            buffers = ["not bytes"]
        options.add_external_initializers_from_files_in_memory(names, buffers, lengths)
        return session(ort, proto, options).run(None, {"x": X})

    assert_same(idiom)


# ---------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("flags", [[True], [False], [True, False], [1], [None]])
def test_load_cancellation_flag(flags):
    def idiom(ort):
        options = ort.SessionOptions()
        for flag in flags:
            options.set_load_cancellation_flag(flag)
        return session(ort, models.linear(), options).run(None, {"x": X})

    assert_same(idiom)


def test_onyxrt_load_cancelled_while_a_session_is_being_created(monkeypatch):
    """Pinned for onyxrt: a flag set during creation (here, by the optimizer) stops it at the next stage."""
    import onyxrt.session.placement as placement

    options, optimize = onyxrt.SessionOptions(), placement.optimize

    def optimize_then_cancel(*args, **kwargs):
        report = optimize(*args, **kwargs)
        options.set_load_cancellation_flag(True)
        return report

    monkeypatch.setattr(placement, "optimize", optimize_then_cancel)
    with pytest.raises(onyxrt.capi.onnxruntime_pybind11_state.ModelLoadCanceled):
        session(onyxrt, models.linear(), options)


def test_load_cancellation_flag_is_positional():
    assert_same(lambda ort: ort.SessionOptions().set_load_cancellation_flag(value=True))


@pytest.mark.parametrize("value", [False, True, 1, 0, None, np.bool_(False), "yes"])
def test_use_per_session_threads_attribute(value):
    def idiom(ort):
        options = ort.SessionOptions()
        default = options.use_per_session_threads
        options.use_per_session_threads = value
        return default, options.use_per_session_threads

    assert_same(idiom)


THREAD_POOL_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
import models
import {module} as ort

def attempt(step):
    try:
        step()
        return "ok"
    except Exception as error:
        return type(error).__name__

def make(per_session, intra=0):
    options = ort.SessionOptions()
    options.use_per_session_threads = per_session
    options.intra_op_num_threads = intra
    sess = ort.InferenceSession(models.linear().SerializeToString(), options, providers=["CPUExecutionProvider"])
    sess.run(None, {{"x": np.ones((1, 4), np.float32)}})

steps = {steps}
print(json.dumps([attempt(eval(step)) for step in steps]))
"""


@pytest.mark.parametrize("steps", [
    pytest.param(["lambda: make(False)", "lambda: ort.set_global_thread_pool_sizes(2, 1)", "lambda: make(False)",
                  "lambda: make(False, intra=3)", "lambda: make(True)", "lambda: ort.set_global_thread_pool_sizes(1, 1)"],
                 id="global_pool_lifecycle"),
    pytest.param(["lambda: make(True)", "lambda: ort.set_global_thread_pool_sizes()", "lambda: make(False)"],
                 id="after_a_session"),
    pytest.param(["lambda: ort.set_global_thread_pool_sizes('2', 0)", "lambda: ort.set_global_thread_pool_sizes(2.0)",
                  "lambda: ort.set_global_thread_pool_sizes(intra_op_num_threads=2, inter_op_num_threads=1)",
                  "lambda: make(False)"], id="arguments"),
])
def test_set_global_thread_pool_sizes(steps):
    """Global pools are per process: each runtime runs the steps in a fresh interpreter."""
    def idiom(ort):
        script = THREAD_POOL_SCRIPT.format(tests=str(REPO / "tests" / "compat"), module=ort.__name__, steps=steps)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert_same(idiom)


def test_onyxrt_sessions_share_the_global_pool():
    """Pinned for onyxrt: sessions with use_per_session_threads=False run on the one global pool."""
    script = (
        "import onyxrt as ort, sys; sys.path.insert(0, {tests!r}); import models\n"
        "ort.set_global_thread_pool_sizes(3, 0)\n"
        "o = ort.SessionOptions(); o.use_per_session_threads = False\n"
        "a, b = (ort.InferenceSession(models.linear().SerializeToString(), o, providers=['CPUExecutionProvider'])"
        " for _ in range(2))\n"
        "from onyxrt.session.global_thread_pool import global_thread_pool\n"
        "print(a._thread_pool is b._thread_pool is global_thread_pool(), a._thread_pool.num_threads)\n"
    ).format(tests=str(REPO / "tests" / "compat"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "3"]


# ---------------------------------------------------------------------------------------------- session API


def test_provider_graph_assignment_info_needs_its_config_entry():
    assert_same(lambda ort: session(ort, models.linear()).get_provider_graph_assignment_info())


def test_provider_graph_assignment_info():
    def idiom(ort):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        info = session(ort, models.linear(), options).get_provider_graph_assignment_info()
        return [(part.ep_name, [(node.name, node.op_type, node.domain) for node in part.get_nodes()]) for part in info]

    assert_same(idiom)


@pytest.mark.parametrize("call", ["get_tuning_results", "set_tuning_results", "set_ep_dynamic_options",
                                  "set_ep_dynamic_options_empty", "release_captured_graph"])
def test_session_methods_of_other_providers(call):
    def idiom(ort):
        sess = session(ort, models.linear())
        return {
            "get_tuning_results": lambda: sess.get_tuning_results(),
            "set_tuning_results": lambda: sess.set_tuning_results([]),
            "set_ep_dynamic_options": lambda: sess.set_ep_dynamic_options({"key": "value"}),
            "set_ep_dynamic_options_empty": lambda: sess.set_ep_dynamic_options({}),
            "release_captured_graph": lambda: sess.release_captured_graph(),
        }[call]()

    assert_same(idiom)


def test_get_all_providers():
    def idiom(ort):
        every = ort.get_all_providers()
        return every, "CPUExecutionProvider" in ort.get_available_providers(), \
            set(ort.get_available_providers()) - {"AzureExecutionProvider"} <= set(every)

    assert_same(idiom)


# ---------------------------------------------------------------------------------------------- dir() coverage

# onnxruntime names onyxrt leaves out on purpose (docs/compatibility.md says why).
NOT_PROVIDED = {
    "": {"AdapterFormat", "LoraAdapter", "ModelCompiler", "ModelPackage", "ModelPackageComponentContext",
         "ModelPackageContext", "ModelPackageOptions", "ModelPackageWriteMode", "OrtArenaCfg", "OrtCompileApiFlags",
         "OrtEpContextData", "OrtEpContextDataBuffer", "OrtEpDevice", "OrtExecutionProviderDevicePolicy",
         "OrtExternalInitializerInfo", "OrtHardwareDevice", "OrtHardwareDeviceType", "OrtSyncStream",
         "SessionIOBinding", "contextlib", "create_and_register_allocator",
         "create_and_register_allocator_v2", "cuda_version", "get_ep_devices", "has_collective_ops",
         "import_capi_exception", "onnxruntime_validation", "package_name", "preload_dlls", "print_debug_info",
         "register_execution_provider_library", "unregister_execution_provider_library",
         # onnxruntime's offline tool packages (attributes once another test imported them): not onyxrt's
         "quantization", "tools", "transformers"},
    "InferenceSession": {"get_input_epdevices"},
    "SessionOptions": {"add_provider", "add_provider_for_devices", "clear_ep_context_data_read_func",
                       "set_ep_context_data_read_func", "set_provider_selection_policy",
                       "set_provider_selection_policy_delegate"},
    "OrtValue": set(),
    "IOBinding": set(),
    "RunOptions": {"add_active_adapter"},
}


@pytest.mark.parametrize("owner", list(NOT_PROVIDED))
def test_dir_covers_onnxruntime_public_names(owner):
    def public(obj):
        names = {name for name in dir(obj) if not name.startswith("_")}
        if isinstance(obj, type):  # instance attributes (options' fields) count too
            try:
                names |= {name for name in dir(obj()) if not name.startswith("_")}
            except TypeError:
                pass
        return names

    theirs = public(getattr(onnxruntime, owner) if owner else onnxruntime)
    ours = public(getattr(onyxrt, owner) if owner else onyxrt)
    assert theirs - ours - NOT_PROVIDED[owner] == set()
