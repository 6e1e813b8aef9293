"""dyntemp: dynamically scaled temperature for contrastive learning."""

from dyntemp import temperature
from dyntemp.loss import NTXent, ntxent

__all__ = ["NTXent", "ntxent", "temperature"]
__version__ = "0.1.0"
