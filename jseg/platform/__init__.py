"""Jittor on this machine: set up before Jittor starts, and described.

    env            configure_jittor (device, oneDNN, compile and thread settings, quiet
                   start; adopt_imported_jittor when jittor came first), environment_report
    toolkit        which CUDA toolkit (nvcc, libcudart) Jittor gets, or why none
    jittor_cuda13  the hash-checked patch that lets Jittor 1.3.11 build with CUDA 13
    openblas       which OpenBLAS the CPU matmuls use, and its threads
"""
