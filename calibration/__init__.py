"""INT8 calibration: data sources, activation capture per stage, scale algorithms (issue 4)."""
