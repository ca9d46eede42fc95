"""The quantization methods' names (components/core/quantize.py implements them): plain data, so the spec
validator reads them without torch."""

METHODS = ("fp16", "bf16", "int8_dynamic", "int8_weight_only", "int4_weight_only")
INTEGER = ("int8_dynamic", "int8_weight_only", "int4_weight_only")
RECIPE = "compression.json"
