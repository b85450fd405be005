import os

# Kernels run in Triton's interpreter on the CPU unless the GPU run asks for CUDA.
if os.environ.get("FLAGEN_TEST_DEVICE", "cpu") != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")
