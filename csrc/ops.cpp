// Schemas of the native kernels behind rmtkd_kernels' custom ops, plus the Python module that loads them.
//
// The public ops (rmtkd::cov_accumulate, rmtkd::projected_linear) are defined in Python
// (rmtkd_kernels/ops.py), which chooses a backend; the rmtkd_C op is the "cpu" and "cuda" backends.
// Their implementations live in csrc/cpu and csrc/cuda and register themselves per dispatch key.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(rmtkd_C, m) {
  // gram (d x d, float64/float32) += upper triangle of x^T x; colsum (d, float64) += column sums of x;
  // nonfinite_rows (int64 scalar) += number of counted rows of x holding NaN/Inf.
  m.def("cov_accumulate(Tensor x, Tensor(a!) gram, Tensor(b!) colsum, Tensor(c!) nonfinite_rows, "
        "Tensor? row_mask) -> ()");
  // No native projected_linear: at many rows cuBLAS's two GEMMs (the reference) win by design, and at few rows
  // the Triton kernel fuses the pair; a hand-written CUDA version would be a slower third option.
}

namespace {
bool compiled_with_cuda() {
#ifdef RMTKD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

PyObject* py_compiled_with_cuda(PyObject*, PyObject*) {
  return PyBool_FromLong(compiled_with_cuda());
}

PyMethodDef methods[] = {
    {"compiled_with_cuda", py_compiled_with_cuda, METH_NOARGS,
     "True when this build contains the CUDA kernels."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "rmtkd native kernels", -1, methods};
}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
