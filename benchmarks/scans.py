"""Security scans against doing the same by hand, side by side in one run.

    python benchmarks/scans.py --runs 5 --output benchmarks/results/scans.json

Four figures (issue 11), each the median of ``--runs`` interleaved repetitions:

* ports: ``scan.ports(web, from_node="client")`` in topologies/scan-lab.yaml against
  the same nmap command run by hand in the client's namespace (nsenter); target <= 1.2x.
* vulnerabilities: ``scan.vulnerabilities`` of a debian-12 machine with a warm cache
  (security lists parsed, changelogs fetched once before timing); target <= 2 s.
* malware: YARA over 200 MB of guest files (200 files of 1 MiB in a debian-12 guest,
  one holding EICAR) streamed over SSH, against ``copy_from`` of the folder plus the
  ``yara`` command-line tool on the copy; target <= 1.5x.
* compliance: rules per second of tiny-baseline on tiny and debian-12-baseline on debian-12.

Needs root (the namespace host), nmap, yara and the debian-12 template.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from boot import emit, summary

from vboxlab.lab import Lab
from vboxlab.security.datafiles import shipped
from vboxlab.security.ports import nmap_argv
from vboxlab.security.session import Scan

ROOT = Path(__file__).resolve().parent.parent
EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def ratio(ours: list[float], theirs: list[float]) -> float:
    return round(statistics.median(ours) / statistics.median(theirs), 3)


def bench_ports(runs: int) -> dict[str, object]:
    with Lab(accel="tcg") as lab, lab.network(ROOT / "topologies/scan-lab.yaml", seed=3):
        web, client = lab.node("web"), lab.node("client")
        web.succeed("mkdir -p /srv && echo hi > /srv/index.html && httpd -p 80 -h /srv")
        scan = Scan(lab)
        argv = [*client.handle.enter_argv(), *nmap_argv("192.168.60.10", ports=None,
                                                         versions=False)]
        ours: list[float] = []
        by_hand: list[float] = []
        for _ in range(runs):
            ours.append(timed(lambda: scan.ports(web, from_node=client)))
            by_hand.append(timed(lambda: subprocess.run(argv, capture_output=True, check=True)))
        return {"vboxlab_s": summary(ours), "by_hand_s": summary(by_hand),
                "ratio": ratio(ours, by_hand), "target_ratio": 1.2,
                "open_ports": sorted(scan.results[-1].open_ports)}  # type: ignore[attr-defined]


def bench_debian(runs: int, megabytes: int) -> dict[str, object]:
    yara_cli = shutil.which("yara")
    if yara_cli is None:
        raise SystemExit("yara (the command-line tool) is missing: apt-get install yara")
    rules = sorted(str(p) for p in shipped("rules").glob("*.yar"))
    with Lab(accel="tcg", boot_timeout=300) as lab:
        deb = lab.vm("deb", template="debian-12")
        scan = Scan(lab)
        warm = timed(lambda: scan.vulnerabilities(deb))
        vulns = [timed(lambda: scan.vulnerabilities(deb)) for _ in range(runs)]
        report = scan.results[-1]
        deb.succeed(f"mkdir -p /root/bench && cd /root/bench && for i in $(seq 1 {megabytes}); "
                    "do head -c 1048576 /dev/urandom > f$i.bin; done && "
                    f"printf '%s' '{EICAR}' > eicar.com", timeout=600)
        ours: list[float] = []
        by_hand: list[float] = []
        copy_part: list[float] = []
        for _ in range(runs):
            ours.append(timed(lambda: scan.malware(deb, ["/root/bench"], engines=["yara"])))
            found = scan.results[-1].detected_paths  # type: ignore[attr-defined]
            with tempfile.TemporaryDirectory() as scratch:
                started = time.perf_counter()
                deb.copy_from("/root/bench", Path(scratch) / "bench")
                copy_part.append(time.perf_counter() - started)
                out = subprocess.run([yara_cli, "-r", *rules, str(Path(scratch) / "bench")],
                                     capture_output=True, text=True, check=True).stdout
                by_hand.append(time.perf_counter() - started)
            assert found == {"/root/bench/eicar.com"} and "EICAR_test_file" in out
        rules_per_s = []
        for _ in range(runs):
            result = scan.compliance(deb, "debian-12-baseline")
            rules_per_s.append(len(result.results) / result.seconds)
        return {
            "vulnerabilities": {"cold_first_scan_s": round(warm, 3), "warm_s": summary(vulns),
                                "target_s": 2.0, "summary": report.summary()},
            "malware_yara": {"megabytes": megabytes, "vboxlab_stream_s": summary(ours),
                             "copy_then_yara_cli_s": summary(by_hand),
                             "of_which_copy_s": summary(copy_part),
                             "ratio": ratio(ours, by_hand), "target_ratio": 1.5},
            "compliance_debian_12_baseline_rules_per_s": summary(rules_per_s, 1),
        }


def bench_tiny_compliance(runs: int) -> dict[str, object]:
    with Lab(accel="tcg") as lab:
        vm = lab.vm("tiny")
        scan = Scan(lab)
        rates = []
        for _ in range(runs):
            result = scan.compliance(vm, "tiny-baseline")
            rates.append(len(result.results) / result.seconds)
        return {"tiny_baseline_rules_per_s": summary(rates, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    result: dict[str, object] = {"benchmark": "scans", "runs": args.runs}
    result["ports"] = bench_ports(args.runs)
    result.update(bench_debian(args.runs, args.megabytes))
    result["compliance_tiny"] = bench_tiny_compliance(args.runs)
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
