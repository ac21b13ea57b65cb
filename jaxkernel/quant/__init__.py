"""int8 quantization: pure functions, int8 modules, model surgery, memory, persistence.

Example::

    from jaxkernel.quant import quantize_model, save_quantized
    save_quantized(quantize_model(model, mode="w8a8"), "out/int8")
"""

from jaxkernel.quant.int8 import (  # noqa: F401
    Int8Embed,
    Int8Linear,
    Int8Weight,
    QuantScale,
    dequantize,
    quantize_int8,
    w8a8_matmul,
)
from jaxkernel.quant.io import load_quantized, save_quantized  # noqa: F401
from jaxkernel.quant.memory import MemoryReport, param_bytes  # noqa: F401
from jaxkernel.quant.transform import dequantize_model, quantize_model, quantized_paths  # noqa: F401
