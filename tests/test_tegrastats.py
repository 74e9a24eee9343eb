"""The tegrastats parser on lines in the formats of JetPack 4, 5 and 6.

The lines are written out here in the formats those releases print (field order, units,
upper-case JetPack 4/5 vs lower-case JetPack 6 sensor names, the JetPack 6 timestamp and
engine fields, one GPU clock per GPC on Orin), for the modules named; idle and loaded."""

import pytest

from edgerestore.runtime.tegrastats import parse_line, summarize

JP4_NANO = ("RAM 1663/3964MB (lfb 91x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
            "CPU [8%@102,3%@102,2%@102,1%@102] EMC_FREQ 3%@1600 GR3D_FREQ 0%@76 APE 25 PLL@22.5C CPU@25.5C "
            "PMIC@50C GPU@23.5C AO@31C thermal@24.25C POM_5V_IN 1850/1850 POM_5V_GPU 0/0 POM_5V_CPU 287/287")
JP4_XAVIER_NX = ("RAM 2903/7764MB (lfb 380x4MB) SWAP 0/3882MB (cached 0MB) CPU [10%@1190,7%@1190,3%@1190,4%@1190,"
                 "off,off] EMC_FREQ 0% GR3D_FREQ 0% AO@37C GPU@37.5C PMIC@100C AUX@37C CPU@38C thermal@37.45C "
                 "VDD_IN 4001/4001 VDD_CPU_GPU_CV 408/408 VDD_SOC 1143/1143")
JP5_ORIN_NX_IDLE = ("RAM 2448/7772MB (lfb 1x4MB) SWAP 0/3886MB (cached 0MB) CPU [3%@729,2%@729,0%@729,1%@729,0%@729,"
                    "0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305,305] VIC_FREQ 729 APE 200 CV0@-256C CPU@48.562C "
                    "SOC2@45.312C SOC0@46.281C CV1@-256C GPU@-256C tj@48.562C SOC1@45.625C CV2@-256C "
                    "VDD_IN 4009mW/4009mW VDD_CPU_GPU_CV 482mW/482mW VDD_SOC 1364mW/1364mW")
JP5_ORIN_NX_LOAD = ("RAM 3105/7772MB (lfb 1x4MB) SWAP 0/3886MB (cached 0MB) CPU [38%@1984,12%@1984,9%@1984,7%@1984,"
                    "4%@1984,3%@1984] EMC_FREQ 46%@2133 GR3D_FREQ 98%@[918,918] VIC_FREQ 729 APE 200 CV0@-256C "
                    "CPU@52.281C SOC2@49.906C SOC0@51.125C CV1@-256C GPU@53.5C tj@53.5C SOC1@50.343C CV2@-256C "
                    "VDD_IN 12873mW/8441mW VDD_CPU_GPU_CV 6020mW/3251mW VDD_SOC 2876mW/2120mW")
JP5_AGX_ORIN = ("RAM 4652/30536MB (lfb 6982x4MB) SWAP 0/15268MB (cached 0MB) CPU [1%@729,0%@729,0%@729,0%@729,"
                "0%@729,0%@729,0%@729,0%@729,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305,305] VIC_FREQ 729 "
                "APE 174 CV0@-256C CPU@45.906C SOC2@42.093C SOC0@43.093C CV1@-256C GPU@-256C tj@45.906C "
                "SOC1@43.281C CV2@-256C VDD_GPU_SOC 2380mW/2380mW VDD_CPU_CV 397mW/397mW VIN_SYS_5V0 2419mW/2419mW "
                "VDDQ_VDD2_1V8AO 503mW/503mW")
JP6_ORIN_NANO = ("11-14-2024 10:21:37 RAM 2081/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@729,1%@729,"
                 "0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] NVJPG off NVJPG1 off VIC off "
                 "OFA off APE 200 cpu@47.375C soc2@46.5C soc0@46.625C gpu@46.031C tj@47.375C soc1@46.937C "
                 "VDD_IN 4410mW/4410mW VDD_CPU_GPU_CV 557mW/557mW VDD_SOC 1392mW/1392mW")
JP6_ORIN_NX = ("12-03-2024 16:05:12 RAM 3377/15656MB (lfb 4x4MB) SWAP 0/7828MB (cached 0MB) CPU [21%@1984,4%@1984,"
               "2%@1984,1%@1984,0%@1984,0%@1984,0%@1984,0%@1984] EMC_FREQ 0%@3199 GR3D_FREQ 0%@[611,611] NVENC off "
               "NVDEC off NVJPG off NVJPG1 off VIC off OFA off NVDLA0 off NVDLA1 off PVA0_FREQ off APE 200 "
               "cpu@50.156C soc2@47.875C soc0@48.75C gpu@47.593C tj@50.156C soc1@48.062C "
               "VDD_IN 5119mW/5119mW VDD_CPU_GPU_CV 808mW/808mW VDD_SOC 1527mW/1527mW")
JP6_ORIN_NX_LOAD = ("12-03-2024 16:05:13 RAM 4012/15656MB (lfb 4x4MB) SWAP 0/7828MB (cached 0MB) CPU [64%@1984,"
                    "15%@1984,8%@1984,6%@1984,2%@1984,1%@1984,0%@1984,0%@1984] EMC_FREQ 38%@3199 "
                    "GR3D_FREQ 97%@[1173,1173] NVENC off NVDEC off NVJPG off NVJPG1 off VIC 12%@115 OFA off "
                    "NVDLA0 off NVDLA1 off PVA0_FREQ off APE 200 cpu@55.312C soc2@51.5C soc0@52.843C gpu@56.25C "
                    "tj@56.25C soc1@52.031C VDD_IN 15231mW/10175mW VDD_CPU_GPU_CV 7744mW/4276mW "
                    "VDD_SOC 3121mW/2324mW")
JP6_AGX_ORIN = ("RAM 3274/62841MB (lfb 13x4MB) SWAP 0/31421MB (cached 0MB) CPU [0%@2201,0%@2201,0%@2201,0%@2201,"
                "0%@2201,0%@2201,0%@2201,0%@2201,0%@2201,0%@2201,0%@2201,0%@2201] EMC_FREQ 0%@3199 "
                "GR3D_FREQ 0%@[0,0] NVENC off NVDEC off NVJPG off NVJPG1 off VIC off OFA off NVDLA0 off NVDLA1 off "
                "PVA0_FREQ off APE 174 cpu@43.593C soc2@39.875C soc0@41.281C gpu@39.281C tj@43.593C soc1@40.218C "
                "VDD_GPU_SOC 3576mW/3576mW VDD_CPU_CV 397mW/397mW VIN_SYS_5V0 3023mW/3023mW")


def test_jetpack5_orin_nx():
    idle, load = parse_line(JP5_ORIN_NX_IDLE), parse_line(JP5_ORIN_NX_LOAD)
    assert (idle.ram_used_mb, idle.ram_total_mb, idle.swap_used_mb) == (2448, 7772, 0)
    assert idle.cpu_load == [3, 2, 0, 1, 0, 0] and idle.cpu_mhz == [729] * 6
    assert (idle.emc_load, idle.emc_mhz, idle.gpu_load, idle.gpu_mhz) == (0, 2133, 0, [305, 305])
    assert idle.rails == {"VDD_IN": (4009, 4009), "VDD_CPU_GPU_CV": (482, 482), "VDD_SOC": (1364, 1364)}
    assert idle.input_power_mw == 4009
    assert "gpu" not in idle.temperatures and "cv0" not in idle.temperatures  # -256C: sensor off
    assert idle.temperatures["cpu"] == 48.562 and idle.temperatures["tj"] == 48.562
    assert (load.gpu_load, load.gpu_mhz, load.emc_load) == (98, [918, 918], 46)
    assert load.rails["VDD_IN"] == (12873, 8441) and load.temperatures["gpu"] == 53.5


def test_jetpack5_agx_orin_has_no_input_rail():
    sample = parse_line(JP5_AGX_ORIN)
    assert sample.cpu_load == [1] + [0] * 7 + [None] * 4 and sample.cpu_mhz[-1] is None
    assert set(sample.rails) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    assert sample.input_power_mw is None and sample.ram_total_mb == 30536


def test_jetpack6_orin_nano_and_nx():
    nano = parse_line(JP6_ORIN_NANO)
    assert (nano.ram_used_mb, nano.gpu_mhz, nano.emc_mhz) == (2081, [305], 2133)
    assert nano.temperatures == {"cpu": 47.375, "soc2": 46.5, "soc0": 46.625, "gpu": 46.031, "tj": 47.375,
                                 "soc1": 46.937}
    assert nano.rails == {"VDD_IN": (4410, 4410), "VDD_CPU_GPU_CV": (557, 557), "VDD_SOC": (1392, 1392)}
    nx, load = parse_line(JP6_ORIN_NX), parse_line(JP6_ORIN_NX_LOAD)
    assert (nx.emc_mhz, nx.gpu_mhz, len(nx.cpu_load)) == (3199, [611, 611], 8)
    assert nx.rails["VDD_IN"] == (5119, 5119) and nx.rails["VDD_CPU_GPU_CV"] == (808, 808)
    assert "NVENC" not in nx.rails and "VIC" not in nx.rails  # engines are not power rails
    assert (load.gpu_load, load.gpu_mhz, load.emc_load, load.input_power_mw) == (97, [1173, 1173], 38, 15231)
    agx = parse_line(JP6_AGX_ORIN)
    assert agx.gpu_mhz == [0, 0] and agx.rails["VDD_GPU_SOC"] == (3576, 3576) and agx.temperatures["gpu"] == 39.281


@pytest.mark.parametrize("line, rails, gpu", [
    (JP4_NANO, {"POM_5V_IN": (1850, 1850), "POM_5V_GPU": (0, 0), "POM_5V_CPU": (287, 287)}, (0, [76])),
    (JP4_XAVIER_NX, {"VDD_IN": (4001, 4001), "VDD_CPU_GPU_CV": (408, 408), "VDD_SOC": (1143, 1143)}, (0, [])),
])
def test_jetpack4_power_without_units(line, rails, gpu):
    sample = parse_line(line)
    assert sample.rails == rails and (sample.gpu_load, sample.gpu_mhz) == gpu
    assert sample.input_power_mw == next(iter(rails.values()))[0]
    assert "IRAM" not in sample.rails


def test_lines_that_are_not_samples():
    assert parse_line("") is None
    assert parse_line("tegrastats: interval set to 100 ms") is None


def test_summary_over_a_run():
    samples = [parse_line(JP6_ORIN_NX), parse_line(JP6_ORIN_NX_LOAD), parse_line(JP6_ORIN_NX_LOAD)]
    for t, sample in enumerate(samples):
        sample.time = 0.1 * t
    report = summarize(samples, frame_seconds=0.05)
    assert report["samples"] == 3 and report["seconds"] == pytest.approx(0.2)
    assert report["input_rail"] == "VDD_IN"
    assert report["input_power_mw"] == {"mean": pytest.approx((5119 + 2 * 15231) / 3), "max": 15231}
    assert report["energy_per_frame_mj"] == pytest.approx((5119 + 2 * 15231) / 3 * 0.05)
    assert report["gpu_load_percent"]["max"] == 97 and report["gpu_mhz"]["max"] == 1173
    assert report["emc_mhz"]["mean"] == 3199 and report["ram_used_mb"]["max"] == 4012
    assert report["temperature_c"]["gpu"]["max"] == 56.25
    assert report["power_mw"]["VDD_SOC"]["mean"] == pytest.approx((1527 + 2 * 3121) / 3)
    assert summarize([parse_line(JP5_AGX_ORIN)], 0.05)["energy_per_frame_mj"] is None
