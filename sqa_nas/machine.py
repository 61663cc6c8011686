"""The machine header every benchmark and trial records: what ran, where, with which software."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess

import torch


def package_version(package: str) -> str | None:
    """The installed version of `package` (a distribution name), None when absent."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def device_name(device: torch.device | str = "cpu") -> str:
    """'NVIDIA H200' for a GPU, the processor for the CPU: the key results are grouped by."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """Total memory of `device`: a CUDA device's own, else this machine's RAM (physical pages
    x page size); None where the system or the driver does not say."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.get_device_properties(device).total_memory
        except (RuntimeError, AssertionError):  # no driver, or torch built without CUDA
            return None
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def machine_info(device: torch.device | str = "cpu") -> dict:
    """The machine header of results: device, host, Python, torch, CUDA, cuDNN, installed kernel
    libraries and sqa-nas versions, CPU threads; on a GPU also driver, memory, SMs, capability."""
    device = torch.device(device)
    info = {
        "device": device_name(device),
        "device_type": device.type,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": package_version("triton"),
        "flash_attn": package_version("flash-attn-4") or package_version("flash-attn"),
        "xformers": package_version("xformers"),
        "sqa_nas": package_version("sqa-nas"),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            driver=_driver(),
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            sm_count=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
        )
    return info


def header_line(info: dict) -> str:
    """One line for a benchmark's header: device, torch, then CUDA, cuDNN, driver, triton and
    flash-attn where `info` (`machine_info`) has them."""
    parts = [info["device"], f"torch {info['torch']}"]
    for key, label in (
        ("cuda", "CUDA"),
        ("cudnn", "cuDNN"),
        ("driver", "driver"),
        ("triton", "triton"),
        ("flash_attn", "flash-attn"),
    ):
        if info.get(key):
            parts.append(f"{label} {info[key]}")
    return " | ".join(parts)
