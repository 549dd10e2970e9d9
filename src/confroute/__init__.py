"""confroute: a confidence-calibrated LLM cascade router."""

__version__ = "0.1.0"
