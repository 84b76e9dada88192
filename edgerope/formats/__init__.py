"""Weight formats as data: block layouts of Q8_0 / Q4_0 (quantize, pack, unpack with numpy)
and `Linear`, a matrix held in one of them with its matmul (edgerope.kernels)."""
