"""Jetson telemetry from ``tegrastats``: parse its lines, sample it during a run, summarise.

``tegrastats`` prints one line per interval. The fields and their spelling vary with the
JetPack release and the module, so the parser reads each field by its own pattern and
leaves out what a line does not have:

* ``RAM used/totalMB (lfb ...)``, ``SWAP used/totalMB (cached ...)``;
* ``CPU [load%@MHz,...]``, a core shown as ``off`` when it is offline;
* ``EMC_FREQ load%@MHz`` (JetPack 4 on some modules: ``EMC_FREQ load%``);
* ``GR3D_FREQ load%@MHz`` (JetPack 4) or ``load%@[MHz,MHz]`` (JetPack 5/6 on Orin: one
  clock per GPC);
* temperatures ``NAME@valueC``, upper-case on JetPack 4/5 (``GPU@45.5C``), lower-case on
  JetPack 6 (``gpu@45.3C``, ``soc0@...``, ``tj@...``); -256C marks a sensor that is off;
* power rails ``NAME current/average``, in mW: ``VDD_IN 4009mW/4009mW`` (JetPack 5/6),
  ``VDD_IN 4001/4001`` or ``POM_5V_IN 1850/1850`` (JetPack 4, no unit). The module's input
  is ``VDD_IN`` (Orin NX / Nano, Xavier NX) or ``POM_5V_IN`` (Nano); AGX Orin reports
  only its sub-rails (``VDD_GPU_SOC``, ``VDD_CPU_CV``, ``VIN_SYS_5V0``, ...);
* JetPack 6 starts each line with a ``MM-DD-YYYY HH:MM:SS`` timestamp and lists engines
  (``NVENC off``, ``VIC 12%@115``) that are ignored here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EdgeRestoreError

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # the module's whole input power, where a line has it
_SENSOR_OFF = -256.0

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_CORE = re.compile(r"(\d+)%(?:@(\d+))?")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}


@dataclass
class TegraSample:
    """One tegrastats line. Loads in percent, clocks in MHz, memory in MB, power in mW."""

    time: float = 0.0  # time.perf_counter() when read (0 for a parsed string)
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    swap_used_mb: int | None = None
    cpu_load: list[int | None] = field(default_factory=list)  # per core, None = offline
    cpu_mhz: list[int | None] = field(default_factory=list)
    emc_load: int | None = None
    emc_mhz: int | None = None
    gpu_load: int | None = None
    gpu_mhz: list[int] = field(default_factory=list)  # one per GPC on Orin
    temperatures: dict[str, float] = field(default_factory=dict)  # lower-case sensor name -> degrees C
    rails: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (current mW, average mW)

    @property
    def input_power_mw(self) -> int | None:
        for name in INPUT_RAILS:
            if name in self.rails:
                return self.rails[name][0]
        return None


def parse_line(line: str) -> TegraSample | None:
    """One tegrastats line -> a sample; None for a line that is not one (no RAM field)."""
    ram = _RAM.search(line)
    if ram is None:
        return None
    sample = TegraSample(ram_used_mb=int(ram[1]), ram_total_mb=int(ram[2]))
    if swap := _SWAP.search(line):
        sample.swap_used_mb = int(swap[1])
    if cpu := _CPU.search(line):
        for core in cpu[1].split(","):
            match = _CORE.fullmatch(core.strip())
            sample.cpu_load.append(int(match[1]) if match else None)
            sample.cpu_mhz.append(int(match[2]) if match and match[2] else None)
    if emc := _EMC.search(line):
        sample.emc_load, sample.emc_mhz = int(emc[1]), int(emc[2]) if emc[2] else None
    if gr3d := _GR3D.search(line):
        sample.gpu_load = int(gr3d[1])
        sample.gpu_mhz = [int(f) for f in gr3d[2].split(",") if f] if gr3d[2] else []
    for name, value in _TEMP.findall(line):
        if float(value) > _SENSOR_OFF:
            sample.temperatures[name.lower()] = float(value)
    for name, current, average in _RAIL.findall(line):
        if name not in _NOT_RAILS:
            sample.rails[name] = (int(current), int(average))
    return sample


def summarize(samples: list[TegraSample], frame_seconds: float | None = None) -> dict:
    """Means and maxima over a run; ``frame_seconds`` (mean latency) adds energy per frame."""
    def stats(values: list[float]) -> dict[str, float] | None:
        values = [v for v in values if v is not None]
        return {"mean": float(np.mean(values)), "max": float(np.max(values))} if values else None

    rails = sorted({name for s in samples for name in s.rails})
    sensors = sorted({name for s in samples for name in s.temperatures})
    power = {name: stats([s.rails[name][0] for s in samples if name in s.rails]) for name in rails}
    input_power = stats([s.input_power_mw for s in samples])
    report = {
        "samples": len(samples),
        "seconds": samples[-1].time - samples[0].time if len(samples) > 1 else 0.0,
        "ram_used_mb": stats([s.ram_used_mb for s in samples]),
        "ram_total_mb": samples[0].ram_total_mb if samples else None,
        "swap_used_mb": stats([s.swap_used_mb for s in samples]),
        "cpu_load_percent": stats([np.mean([c for c in s.cpu_load if c is not None]) for s in samples
                                   if any(c is not None for c in s.cpu_load)]),
        "gpu_load_percent": stats([s.gpu_load for s in samples]),
        "gpu_mhz": stats([max(s.gpu_mhz) for s in samples if s.gpu_mhz]),
        "emc_load_percent": stats([s.emc_load for s in samples]),
        "emc_mhz": stats([s.emc_mhz for s in samples]),
        "power_mw": power,
        "input_rail": next((name for name in INPUT_RAILS if name in rails), None),
        "input_power_mw": input_power,
        "energy_per_frame_mj": input_power["mean"] * frame_seconds if input_power and frame_seconds else None,
        "temperature_c": {name: stats([s.temperatures.get(name) for s in samples]) for name in sensors},
    }
    return report


def available() -> bool:
    return shutil.which("tegrastats") is not None


def jetson_model() -> str | None:
    """The board name from the device tree (e.g. 'NVIDIA Jetson Orin NX Engineering Reference
    Developer Kit'), None elsewhere."""
    try:
        model = Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode(errors="replace").strip()
    except OSError:
        return None
    return model if "jetson" in model.lower() else None


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` while the ``with`` block runs; ``samples`` holds the
    parsed lines. tegrastats itself decides what a user may see (JetPack 5/6 need no root)."""

    def __init__(self, interval_ms: int = 100, executable: str = "tegrastats"):
        self.interval_ms = interval_ms
        self.executable = executable
        self.samples: list[TegraSample] = []
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> TegrastatsSampler:
        self.samples = []
        try:
            self._process = subprocess.Popen([self.executable, "--interval", str(self.interval_ms)],
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        except OSError as err:
            raise EdgeRestoreError(f"cannot run {self.executable}: {err.strerror or err}") from None
        self._first = threading.Event()
        self._reader = threading.Thread(target=self._read, name="edgerestore-tegrastats", daemon=True)
        self._reader.start()
        # The run starts once tegrastats reports: a run shorter than the interval still has a sample.
        self._first.wait(timeout=1.0 + 3 * self.interval_ms / 1000)
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            sample = parse_line(line)
            if sample is not None:
                sample.time = time.perf_counter()
                self.samples.append(sample)
                self._first.set()
        self._first.set()  # ended (or never started): do not keep __enter__ waiting

    def __exit__(self, *exc) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=2)
        self._process.stdout.close()
