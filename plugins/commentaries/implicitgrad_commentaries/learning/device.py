"""Choosing the device that students, teachers and data batches live on."""

from __future__ import annotations

import re

import torch

from implicitgrad import InputError

__all__ = ["DEVICES", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
"""The device names `resolve_device` accepts."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The `torch.device` for a device name, checked to be usable here.

    **Arguments:**

    - `name`: `"auto"` (CUDA when available, else the CPU), `"cpu"`, `"cuda"`, `"cuda:N"`
      or `"mps"`, or a `torch.device`.

    **Returns:**

    The device.

    **Raises:**

    `InputError` if the name is not one of those, or the device is not available on this
    machine (the message says what is there).

    **Example:**

    ```python
    from implicitgrad_commentaries.learning import resolve_device
    assert resolve_device("cpu").type == "cpu"
    print(resolve_device("auto"))
    ```
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise InputError(f"expected a device name such as 'cpu' or 'cuda', got {name!r}")
    text = name.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match:
        if not torch.cuda.is_available():
            why = (
                "this torch is built without CUDA"
                if torch.version.cuda is None
                else ("no CUDA GPU is visible")
            )
            raise InputError(f"device {name!r} is not available: {why}; use --device cpu")
        count = torch.cuda.device_count()
        index = int(match.group(1) or 0)
        if index >= count:
            raise InputError(
                f"device {name!r} is not available: this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}"
            )
        return torch.device("cuda", index)
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(
                f"device {name!r} is not available: Apple's Metal backend is not usable "
                "here; use --device cpu"
            )
        return torch.device("mps")
    raise InputError(f"unknown device {name!r}; expected one of {', '.join(DEVICES)}")
