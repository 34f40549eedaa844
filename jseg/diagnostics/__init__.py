"""Programs that use the whole stack to check it: speed (benchmark, with torch_worker for
the PyTorch side), numerical parity with mmsegmentation (parity), parameter / MAC counts
(flops), the check of a GPU machine (gpu_check) and the CUDA build without a GPU
(cuda_compile). The command lines are tools/benchmark.py, tools/parity.py,
tools/get_flops.py, tools/gpu_check.py (tools/gpu_run.py on an offline host) and
tools/jittor_cuda13.py compile-check.
"""
