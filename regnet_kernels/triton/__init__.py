"""Triton kernels of regnet_kernels, one module per op (kernel + launcher + torch.library.triton_op).

Importing this package needs triton; regnet_kernels.backends.triton imports it lazily and
reports "triton not importable" otherwise. Set TRITON_INTERPRET=1 before triton is first
imported to run the kernels on CPU tensors (the tests do).
"""
