"""Supply-chain benchmark (issue 2): prints figures, asserts nothing.

1. build + sign + verify of each example agent with our Python API, against a shell baseline doing
   the same work in the same run (tar --sort=name | zstd -19, openssl dgst -sign, openssl dgst -verify);
2. verification alone: median and p95 per bundle, next to sha256sum of the same bytes;
3. compressed / raw size per agent, without and with a zstd dictionary trained on prompts;
4. one agent_signature verify task's wall time in ansible-playbook, against ansible.builtin.command
   /bin/true in the same run.

    .venv/bin/python bench/supply_chain.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import zstandard

from chenu_agents import bundle, signing
from chenu_agents.files import write_if_changed
from chenu_agents.keystore import FileKeyStore
from chenu_agents.policy import agent_files

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "agents"


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) >= 20 else max(values)


def ms(x: float) -> str:
    return f"{x * 1000:8.2f}"


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    agents = sorted(p.parent for p in EXAMPLES.glob("*/config.yaml"))
    work = Path(tempfile.mkdtemp(prefix="chenu-bench-"))
    store = FileKeyStore(work / "keys")
    store.ensure_key()
    trust = store.trust_store()
    key_pem = next((work / "keys").glob("*.pem"))
    sh(f"openssl pkey -in {key_pem} -pubout -out {work}/pub.pem")

    print(f"# Supply chain benchmark, {datetime.now().isoformat(timespec='seconds')}, {args.runs} runs each, medians")
    print("\n## 1. build + sign + verify: ours (Python API) vs shell baseline (tar | zstd -19, openssl)")
    print(f"{'agent':<12}{'ours ms':>10}{'shell ms':>10}{'ours/shell':>12}")
    for agent in agents:
        dest = work / f"{agent.name}.tar.zst"

        def ours(agent=agent, dest=dest):
            result = bundle.build(agent)
            write_if_changed(dest, result.data)
            signing.sign_bundle(dest, store, agent=result.agent, version=result.version)
            signing.verify_bundle(dest, trust, agent=result.agent, version=result.version)

        base = work / f"{agent.name}.shell.tar.zst"
        shell = (
            f"tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --exclude=__pycache__ -C {agent} -cf - . "
            f"| zstd -19 -q -f -o {base} && openssl dgst -sha256 -sign {key_pem} -out {base}.sig {base} "
            f"&& openssl dgst -sha256 -verify {work}/pub.pem -signature {base}.sig {base}"
        )
        o = statistics.median(timed(ours, args.runs))
        s = statistics.median(timed(lambda shell=shell: sh(shell), args.runs))
        print(f"{agent.name:<12}{ms(o):>10}{ms(s):>10}{o / s:>12.2f}")

    print("\n## 2. verification alone (signature + freshness + sha256 of the bundle)")
    print(f"{'agent':<12}{'bytes':>9}{'median ms':>11}{'p95 ms':>9}{'sha256sum ms':>14}")
    for agent in agents:
        dest = work / f"{agent.name}.tar.zst"
        v = timed(lambda dest=dest: signing.verify_bundle(dest, trust), max(200, args.runs))
        s = timed(lambda dest=dest: sh(f"sha256sum {dest}"), args.runs)
        print(
            f"{agent.name:<12}{dest.stat().st_size:>9}{ms(statistics.median(v)):>11}{ms(p95(v)):>9}{ms(statistics.median(s)):>14}"
        )
    big = work / "big.bin"
    big.write_bytes(os.urandom(50 << 20))
    signing.sign_bundle(big, store, agent="big", version="1.0.0")
    v = timed(lambda: signing.verify_bundle(big, trust), 10)
    s = timed(lambda: sh(f"sha256sum {big}"), 5)
    print(
        f"{'50 MiB file':<12}{big.stat().st_size:>9}{ms(statistics.median(v)):>11}{ms(p95(v)):>9}{ms(statistics.median(s)):>14}"
    )
    big.unlink()

    print("\n## 3. size: compressed / raw (zstd -19), without and with a 16 KiB dictionary trained on prompts")
    print("(in-sample: trained on every agent, an optimistic bound; held-out: trained on the other agents only)")
    texts = {
        a.name: [p.read_bytes() for p in agent_files(a) if "prompts" in p.parts or p.suffix in {".md", ".yaml"}]
        for a in agents
    }

    def train(names):
        # samples repeated: zstd's trainer wants many more samples than three small agents have
        return zstandard.train_dictionary(16 * 1024, [t for n in names for t in texts[n]] * 8)

    everyone = train(texts)
    print(f"{'agent':<12}{'raw':>8}{'plain':>8}{'saving':>8}{'in-sample':>11}{'gain':>7}{'held-out':>10}{'gain':>7}")
    for agent in agents:
        result = bundle.build(agent)
        tar = zstandard.ZstdDecompressor().decompress(result.data)
        sizes = [
            len(zstandard.ZstdCompressor(level=19, dict_data=d).compress(tar))
            for d in (everyone, train([n for n in texts if n != agent.name]))
        ]
        gains = [1 - size / result.compressed_size for size in sizes]
        print(
            f"{agent.name:<12}{result.raw_size:>8}{result.compressed_size:>8}{result.saving:>8.1%}"
            f"{sizes[0]:>11}{gains[0]:>7.1%}{sizes[1]:>10}{gains[1]:>7.1%}"
        )
    print(f"dictionary size to ship to every verifier: {len(everyone.as_bytes())} bytes")

    print("\n## 4. ansible-playbook: one agent_signature verify task vs one command: /bin/true task")
    playbook = work / "verify.yml"
    dest = work / f"{agents[0].name}.tar.zst"
    trust.save(work / "trust.json")
    tasks = []
    for i in range(5):
        tasks.append({"name": f"true {i}", "ansible.builtin.command": "/bin/true", "changed_when": False})
        tasks.append(
            {
                "name": f"verify {i}",
                "chenu.agents.agent_signature": {"bundle": str(dest), "trust_store": str(work / "trust.json")},
            }
        )
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
    }
    run = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    durations: dict[str, list[float]] = {"true": [], "verify": []}
    for task in json.loads(run.stdout)["plays"][0]["tasks"]:
        d = task["task"]["duration"]
        span = datetime.fromisoformat(d["end"].rstrip("Z")) - datetime.fromisoformat(d["start"].rstrip("Z"))
        durations[task["task"]["name"].split()[0]].append(span.total_seconds())
    t, v = statistics.median(durations["true"]), statistics.median(durations["verify"])
    print(f"command /bin/true: {ms(t)} ms   agent_signature verify: {ms(v)} ms   ratio {v / t:.2f}")


if __name__ == "__main__":
    main()
