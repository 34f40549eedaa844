"""Programs that use the whole stack to check it: speed (benchmark, with torch_worker for
the PyTorch side), numerical parity with mmsegmentation (parity), and parameter / MAC
counts (flops). The command lines are tools/benchmark.py, tools/parity.py and
tools/get_flops.py.
"""
