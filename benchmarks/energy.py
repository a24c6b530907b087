"""Energy meters for the benchmarks: NVML on NVIDIA GPUs, RAPL on CPUs; each says plainly when it cannot measure.

``measure(meter, run, device)`` calls ``run()`` repeatedly for at least ``min_seconds`` (synchronised) and
returns joules per call and average watts, total and above the idle power measured the same way
(``meter.idle_watts``). Meters:

- ``NvmlMeter``: the GPU's total-energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ) read before and
  after each window; where the counter is unsupported it samples nvmlDeviceGetPowerUsage every 10 ms in a
  thread and integrates (``method`` says which). Logs clocks, temperature and power limit with every window.
- ``RaplMeter``: /sys/class/powercap/intel-rapl:*/energy_uj package counters (wrap-around handled).
- Neither available: ``unavailable(reason)`` → results carry ``energy: {"available": false, "reason": ...}``.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

POWERCAP = Path("/sys/class/powercap")


def pci_bus_id(device: torch.device) -> str:
    """The PCI address NVML knows a torch CUDA device by ("00000000:65:00.0"). NVML numbers GPUs in PCI order
    and ignores CUDA_VISIBLE_DEVICES, which renumbers torch's; the bus id is the one name both agree on."""
    props = torch.cuda.get_device_properties(device.index if device.index is not None else torch.cuda.current_device())
    return f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"


class NvmlMeter:
    def __init__(self, device: torch.device) -> None:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id(device))
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.method = "nvml total-energy counter"
        except pynvml.NVMLError:
            self.method = "nvml power sampling every 10 ms (energy counter unsupported)"
        self.idle_watts: Optional[float] = None

    def _energy_counter_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3

    def window(self, body: Callable[[], int]) -> tuple[float, float, int]:
        """(joules, seconds, calls) over ``body()``, which runs calls until its time is up and returns their count."""
        if self.method.startswith("nvml total"):
            before, started = self._energy_counter_j(), time.perf_counter()
            calls = body()
            return self._energy_counter_j() - before, time.perf_counter() - started, calls
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3)
                time.sleep(0.01)

        thread = threading.Thread(target=sample, daemon=True)
        started = time.perf_counter()
        thread.start()
        calls = body()
        stop.set()
        thread.join()
        seconds = time.perf_counter() - started
        return sum(samples) / max(len(samples), 1) * seconds, seconds, calls

    def state(self) -> dict[str, Any]:
        n = self.nvml
        return {"sm_clock_mhz": n.nvmlDeviceGetClockInfo(self.handle, n.NVML_CLOCK_SM),
                "mem_clock_mhz": n.nvmlDeviceGetClockInfo(self.handle, n.NVML_CLOCK_MEM),
                "temperature_c": n.nvmlDeviceGetTemperature(self.handle, n.NVML_TEMPERATURE_GPU),
                "power_limit_w": n.nvmlDeviceGetEnforcedPowerLimit(self.handle) / 1e3}


class RaplMeter:
    method = "rapl package energy counters"

    def __init__(self) -> None:
        zones = sorted(p for p in POWERCAP.glob("intel-rapl:*") if p.name.count(":") == 1)
        if not zones:
            raise OSError(f"no RAPL package zone under {POWERCAP}")
        self.zones = [(z / "energy_uj", int((z / "max_energy_range_uj").read_text())) for z in zones]
        self._read()  # raises PermissionError where the counters are root-only
        self.idle_watts: Optional[float] = None

    def _read(self) -> list[int]:
        return [int(path.read_text()) for path, _ in self.zones]

    def window(self, body: Callable[[], int]) -> tuple[float, float, int]:
        before, started = self._read(), time.perf_counter()
        calls = body()
        after, seconds = self._read(), time.perf_counter() - started
        joules = sum((a - b) % wrap for a, b, (_, wrap) in zip(after, before, self.zones)) / 1e6
        return joules, seconds, calls

    def state(self) -> dict[str, Any]:
        return {}


Meter = NvmlMeter | RaplMeter


def open_meter(device: torch.device) -> tuple[Optional[Meter], str]:
    """(meter, how it measures) or (None, why energy cannot be measured here)."""
    try:
        if device.type == "cuda":
            return (meter := NvmlMeter(device)), meter.method
        return (meter := RaplMeter()), meter.method
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
    except Exception as error:  # NVML init failures, missing or unreadable powercap files
        where = "NVML" if device.type == "cuda" else f"RAPL ({POWERCAP})"
        return None, f"{where} unavailable: {type(error).__name__}: {error}"


def _timed_loop(run: Callable[[], object], device: torch.device, min_seconds: float) -> Callable[[], int]:
    def body() -> int:
        calls, started = 0, time.perf_counter()
        while calls == 0 or time.perf_counter() - started < min_seconds:
            run()
            calls += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return calls
    return body


def measure_idle(meter: Meter, device: torch.device, seconds: float = 2.0) -> float:
    """Idle watts over one window of sleeping, measured like the loads; stored on the meter."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    joules, elapsed, _ = meter.window(_timed_loop(lambda: time.sleep(0.05), device, seconds))
    meter.idle_watts = joules / elapsed
    return meter.idle_watts


def measure(meter: Meter, run: Callable[[], object], device: torch.device, min_seconds: float = 1.0,
            items_per_call: int = 1) -> dict[str, Any]:
    """Energy of ``run()`` over a window of at least ``min_seconds``: per item (e.g. per inference) and watts."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    joules, seconds, calls = meter.window(_timed_loop(run, device, min_seconds))
    items = calls * items_per_call
    idle = meter.idle_watts or 0.0
    return {"available": True, "method": meter.method, "window_s": seconds, "calls": calls,
            "joules_per_item": joules / items, "watts": joules / seconds,
            "joules_per_item_above_idle": (joules - idle * seconds) / items, "watts_above_idle": joules / seconds - idle,
            "idle_watts": meter.idle_watts, **meter.state()}
