"""Where a result came from: cores and CPU features on every system, not only Linux."""

from __future__ import annotations

import json
import os
import platform

import pytest
import torch

from dyntemp import provenance

X86_FLAGS = "flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512dq avx512_bf16 avx512_vnni\n"
ARM_FEATURES = "Features\t: fp asimd evtstrm aes sha1 sha2 crc32 atomics bf16 i8mm sve\n"


def fake_cpu(monkeypatch, tmp_path, arch: str, cpuinfo: str | None, capability: str) -> None:
    """A machine of architecture ``arch`` with this /proc/cpuinfo (None: there is none)."""
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text("processor\t: 0\nmodel name\t: Test CPU\n" + cpuinfo)
    monkeypatch.setattr(provenance, "_CPUINFO", path)
    monkeypatch.setattr(platform, "machine", lambda: arch)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)


# -- cores ---------------------------------------------------------------------------------------


def test_usable_cores_is_the_affinity_where_there_is_one(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert provenance.usable_cores() == 3


@pytest.mark.parametrize("has_process_cpu_count", [True, False])
def test_usable_cores_without_sched_getaffinity(monkeypatch, has_process_cpu_count):
    """macOS and Windows have no os.sched_getaffinity: machine() must still work there."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.delattr(os, "process_cpu_count", raising=False)
    if has_process_cpu_count:  # Python 3.13+
        monkeypatch.setattr(os, "process_cpu_count", lambda: 6, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert provenance.usable_cores() == (6 if has_process_cpu_count else 8)
    assert provenance.machine()["cpu_cores"] == provenance.usable_cores()
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable"
    assert provenance.usable_cores() == (6 if has_process_cpu_count else 1)


# -- CPU features ----------------------------------------------------------------------------


def test_x86_bf16_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, tmp_path, "x86_64", X86_FLAGS, "AVX512")
    features = provenance.cpu_features()
    assert features["avx512_bf16"] is True and features["amx_bf16"] is False
    assert features["avx2"] is True and features["torch_capability"] == "AVX512"
    assert provenance.native_bf16_cpu() is True
    fake_cpu(monkeypatch, tmp_path, "x86_64", "flags : sse2 avx2 amx_tile amx_bf16\n", "AVX512")
    assert provenance.native_bf16_cpu() is True  # AMX alone is enough
    fake_cpu(monkeypatch, tmp_path, "x86_64", "flags : sse2 avx2 avx512f\n", "AVX512")
    assert provenance.native_bf16_cpu() is False


def test_bf16_flags_that_pytorch_contradicts_are_not_trusted(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, tmp_path, "x86_64", X86_FLAGS, "AVX2")
    assert provenance.cpu_features()["avx512_bf16"] is True
    assert provenance.native_bf16_cpu() is False


def test_arm64_linux_bf16_is_the_features_flag(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, tmp_path, "aarch64", ARM_FEATURES, "SVE256")
    features = provenance.cpu_features()
    assert features["arm_bf16"] is True and features["arm_sve"] is True
    assert "avx512_bf16" not in features
    assert provenance.native_bf16_cpu() is True
    fake_cpu(monkeypatch, tmp_path, "aarch64", "Features\t: fp asimd\n", "DEFAULT")
    assert provenance.native_bf16_cpu() is False


@pytest.mark.parametrize("arch", ["x86_64", "arm64", "ppc64le"])
def test_without_cpuinfo_the_flags_are_unknown_and_bf16_is_not_native(monkeypatch, tmp_path, arch):
    fake_cpu(monkeypatch, tmp_path, arch, None, "DEFAULT")  # macOS, Windows
    features = provenance.cpu_features()
    flags = {f: v for f, v in features.items() if f not in ("torch_capability", "native_bf16")}
    assert all(v is None for v in flags.values())
    assert provenance.native_bf16_cpu() is False
    assert provenance.machine("cpu")["cpu_features"] == features


def test_machine_records_cpu_features_for_the_cpu_only(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, tmp_path, "x86_64", X86_FLAGS, "AVX512")
    info = provenance.machine("cpu")
    assert info["cpu"] == "Test CPU" and info["device"] == "Test CPU"
    assert info["cpu_features"]["native_bf16"] is True
    assert provenance.machine()["cpu_features"] == info["cpu_features"]
    json.dumps(info)  # written into results.json as it is
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Test GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    gpu = provenance.machine("cuda:0")
    assert gpu["device"] == "Test GPU" and "cpu_features" not in gpu


def test_this_machine_answers():
    """On the machine running the tests, whatever it is: no exception, plain types."""
    features = provenance.cpu_features()
    assert isinstance(provenance.native_bf16_cpu(), bool)
    assert all(v is None or isinstance(v, bool | str) for v in features.values())
    assert provenance.usable_cores() >= 1


def test_load_average_without_getloadavg(monkeypatch):
    monkeypatch.delattr(os, "getloadavg", raising=False)
    assert provenance.load_average() is None


def test_the_package_commit_is_the_last_change_of_the_code(tmp_path):
    import subprocess

    def git(*arguments):
        subprocess.run(["git", *arguments], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "a@b.c")
    git("config", "user.name", "a")
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "code")
    code = provenance.git_commit(package)
    (tmp_path / "results.json").write_text("{}")
    git("add", ".")
    git("commit", "-qm", "results")
    assert provenance.git_commit(package) != code  # HEAD moved on
    assert provenance.package_commit(package) == code  # the code did not
    (package / "code.py").write_text("x = 2\n")
    assert provenance.package_commit(package) == code + "+dirty"


def test_the_cpu_kind_tells_apart_processors_of_one_model_name(monkeypatch, tmp_path):
    """Two 'AMD EPYC' of different families run the trainer at different speeds."""
    fake_cpu(monkeypatch, tmp_path, "x86_64", "cpu family\t: 25\nmodel\t\t: 17\n" + X86_FLAGS,
             "AVX512")  # fmt: skip
    assert provenance.cpuinfo("model name") == "Test CPU"
    assert provenance.cpu_kind() == "family 25 model 17"
    assert provenance.machine("cpu")["cpu_kind"] == "family 25 model 17"
    fake_cpu(monkeypatch, tmp_path, "arm64", ARM_FEATURES, "DEFAULT")  # no family, no model
    assert provenance.cpu_kind() is None and provenance.machine()["cpu_kind"] is None
    (tmp_path / "elsewhere").mkdir()
    fake_cpu(monkeypatch, tmp_path / "elsewhere", "x86_64", None, "DEFAULT")  # no /proc/cpuinfo
    assert provenance.cpuinfo("model name") is None and provenance.cpu_kind() is None
