"""The lockdown proof suite: python -m proof (as root, inside a network
namespace of its own; scripts/notebook-proof.sh makes it and cleans up).

One JupyterHub 5.5.0; for each attempt two new users, each with a server
from its own single-user install: "locked" (the hardened image's way) and
"open" (the same extension without the lockdown). For each attempt, on both
at once: start the server, do the attempt as the user from a kernel, stop
and start the server through the hub's API with the user's token (passing
the variables the attempt passes), then check that the lockdown still
holds: the server runs the extension, contents and /files/ are
notebooks-only, JupyterLab's page config (and with --browser the real
JupyterLab) has no download entries, no code of the user's ran in the
server. Attempts run a few at a time (--parallel), each pair on its own
users, so no attempt sees another's leftovers.

Prints the table; exits 0 only when every attempt held (or made the locked
server refuse to start, naming a lockdown problem) with the lockdown and
succeeded without it, except where this machine cannot show the attempt
succeed even without the lockdown, which the row says, with the reason
measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from . import env
from .attempts import ATTEMPTS, LAB_DIR_MARKER, MARKER, PRELUDE, Attempt, expand, remove_outside_home
from .hub import LocalHub, User, http

SECRET = "PR00F-SECRET-51c2"
CSV = f"{SECRET},alice,4242\n"
REFUSAL = "the server refuses to start: the lockdown is not in effect:"


def make_user(name: str, home: str) -> User:
    subprocess.run(["useradd", "--home-dir", home, "--create-home", "--shell", "/bin/bash",
                    "--user-group", name], check=True)
    pw = pwd.getpwnam(name)
    # The user's files: a secret CSV and a notebook, in the server's root.
    with open(os.path.join(home, "data.csv"), "w") as f:
        f.write(CSV)
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {},
                     "outputs": [], "source": "print(6 * 7)"}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                      "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    with open(os.path.join(home, "nb.ipynb"), "w") as f:
        json.dump(nb, f)
    for p in ("data.csv", "nb.ipynb"):
        os.chown(os.path.join(home, p), pw.pw_uid, pw.pw_gid)
    return User(name, home, pw.pw_uid, pw.pw_gid)


@dataclass
class Outcome:
    started: bool = False
    broken: list[str] = field(default_factory=list)
    ran_in_server: bool = False  # the payload recorded that it ran in the server process
    refusal: str = ""  # the first problem the server named when it refused to start
    applied: str = ""  # what the attempt printed in the kernel
    seconds: float = 0.0
    error: str = ""  # the harness failed (a server that did not start clean, a kernel that did not answer)


async def observe(hub: LocalHub, user: User, attempt: Attempt | None, log=None) -> list[str]:
    """What is broken in the running server; [] means the lockdown held."""
    base = hub.server_url(user)
    probes = attempt.probes if attempt else ()
    broken = []
    st = await http("GET", base + "api/hubwarden", user.token)
    if st.code != 200:
        broken.append(f"extension not loaded (/api/hubwarden {st.code})")
    r = await http("GET", base + "api/contents/data.csv?type=file&format=text", user.token)
    if SECRET.encode() in r.body:
        broken.append("data.csv served by the contents API")
    r = await http("GET", base + "files/data.csv", user.token)
    if SECRET.encode() in r.body:
        broken.append("data.csv served by /files/")
    lab = await http("GET", base + "lab", user.token)
    m = re.search(rb'<script id="jupyter-config-data" type="application/json">(.*?)</script>', lab.body, re.S)
    if not m:
        broken.append(f"no JupyterLab page ({lab.code})")
    else:
        pc = json.loads(m.group(1))
        enabled = [p for p in env.DOWNLOAD_PLUGINS if p not in pc.get("disabledExtensions", [])]
        if enabled:
            broken.append(f"page config enables {len(enabled)} download plugins")
        if any(e.get("name") == "hubwarden-proof-ext" for e in pc.get("federated_extensions", [])):
            broken.append("the user's labextension is loaded into JupyterLab")
    if LAB_DIR_MARKER.encode() in lab.body:
        broken.append("JupyterLab's page comes from the user's application directory")
    if "labextension" in probes:
        r = await http("GET", base + "lab/extensions/hubwarden-proof-ext/static/data.csv")  # no token
        if SECRET.encode() in r.body:
            broken.append("data.csv served without authentication from the labextension")
    if "kernelspec" in probes:
        r = await http("GET", base + "kernelspecs/proofk/logo-64x64.png", user.token)
        if SECRET.encode() in r.body:
            broken.append("data.csv served as the kernelspec's logo")
    if "ptrace" in probes:
        out = await hub.run_as_user(user, "import os\ntry:\n    open('/proc/%d/mem' % os.getppid(), 'r+b').close()\n"
                                          "    print('OPENED')\nexcept OSError as e:\n    print('refused', e.errno)", log=log)
        if "OPENED" in out:
            broken.append("the server's memory is writable by the user's kernel")
    return broken


def refusal_in(log: str) -> str:
    """The first problem a server named when it refused to start, from its log."""
    i = log.rfind(REFUSAL)
    if i < 0:
        return ""
    rest = log[i + len(REFUSAL):].strip().splitlines()
    return rest[0].strip() if rest else "(no reason given)"


def ran_in_server(user: User) -> bool:
    return os.path.exists(os.path.join(user.home, MARKER))


async def run_attempt(hub: LocalHub, user: User, a: Attempt | None, log, browser=None) -> Outcome:
    t0 = time.monotonic()
    o = Outcome()
    if not await hub.start_server(user):
        raise RuntimeError(f"{user.name}'s server did not start before the attempt; see {hub.logs}/{user.name}.log")
    if a is None:
        o.started = True
    else:
        if a.apply:
            o.applied = (await hub.run_as_user(user, PRELUDE + a.apply, log=log)).strip()
            log(f"  {user.name} {a.id}: applied: {o.applied[-300:]!r}")
        o.started = True
        if a.restart:
            await hub.stop_server(user)
            start_env = {k: expand(v, user.name, user.home) for k, v in a.start_env.items()}
            o.started = await hub.start_server(user, start_env)
    if o.started:
        o.broken = await observe(hub, user, a, log)
        if browser and (a is None or a.restart):
            o.broken += await browser.check(user, first=a is None)
    else:
        o.refusal = refusal_in(hub.server_log(user))
    o.ran_in_server = ran_in_server(user)
    if o.started:
        await hub.stop_server(user)
    o.seconds = round(time.monotonic() - t0, 1)
    return o


@dataclass
class Row:
    id: str
    title: str
    locked: Outcome
    open: Outcome
    attempt: Attempt | None

    def locked_verdict(self) -> tuple[str, bool]:
        """The with-the-lockdown column and whether the row fails on it."""
        o = self.locked
        if o.error:
            return f"ERROR (the proof could not do the attempt): {o.error}", True
        ran = " (the user's code ran in the server process before any check could; see the limits below)" \
            if o.ran_in_server else ""
        if not o.started:
            if o.refusal:
                return f"refused to start (fail closed): {o.refusal}{ran}", False
            return "did not start, naming no lockdown problem (see its log)", True
        broken = o.broken + (["the user's code ran in the server"] if o.ran_in_server else [])
        if broken:
            return "SUBVERTED: " + "; ".join(broken), True
        return "held", False

    def open_verdict(self) -> tuple[str, bool]:
        o = self.open
        if o.error:
            return f"ERROR (the proof could not do the attempt): {o.error}", True
        broken = o.broken + (["the user's code ran in the server"] if o.ran_in_server else [])
        if self.attempt is None:  # the baseline: the open install holds until subverted
            return ("held", False) if o.started and not broken else ("BROKEN: " + "; ".join(broken), True)
        if o.started and broken:
            return "SUBVERTED: " + "; ".join(broken), False
        if o.ran_in_server:
            return "SUBVERTED: the user's code ran in the server", False
        reason = self.attempt.cannot_show()
        if reason:
            return f"cannot be shown on this machine: {reason}", False
        what = "held" if o.started else "did not start"
        return f"{what} (the attempt did not succeed without the lockdown: the suite cannot tell the difference)", True


def print_table(rows: list[Row]) -> int:
    print("\n| attempt (as the user, then Stop and Start through the hub) | with the lockdown | without the lockdown |")
    print("|---|---|---|")
    failures = 0
    for r in rows:
        lv, lf = r.locked_verdict()
        ov, of = r.open_verdict()
        failures += lf + of
        print(f"| {r.title} | {lv} | {ov} |")
    limits = [r for r in rows if r.locked.ran_in_server and not r.locked.started]
    if limits:
        print("\nLimits (the server refused to start, but the user's code had run in its process first: a "
              "variable the loader acts on before Python starts; no check inside the server can stop that, "
              "the deployment must not let users set it):")
        for r in limits:
            print(f"- {r.title}")
    return failures


async def main_async(args) -> int:
    run = args.run_dir
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    log = (lambda s: print(s, flush=True))
    tag = str(os.getpid())
    selected = [a for a in ATTEMPTS if (not args.only or a.id in args.only) and (not args.ci or a.ci)]
    t0 = time.monotonic()
    # A pair of users for the baseline and for each attempt.
    pairs: list[tuple[Attempt | None, User, User]] = []
    os.makedirs(os.path.join(run, "home"), mode=0o755)
    for i, a in enumerate([None, *selected]):
        lk = make_user(f"hwnb{tag}l{i}", os.path.join(run, "home", f"l{i}"))
        args.cleanup_users.append(lk.name)
        op = make_user(f"hwnb{tag}o{i}", os.path.join(run, "home", f"o{i}"))
        args.cleanup_users.append(op.name)
        pairs.append((a, lk, op))
    locked_env = env.build(os.path.join(run, "env-locked"), src, True)
    template = env.build(os.path.join(run, "env-open"), src, False)
    servers = {}
    for _, lk, op in pairs:
        servers[lk.name] = {"cmd": locked_env.cmd, "env": locked_env.env}
        oe = env.clone(template, os.path.join(run, f"env-{op.name}"), (op.uid, op.gid))
        servers[op.name] = {"cmd": oe.cmd, "env": oe.env}
    log(f"proof: {len(pairs) * 2} users and their environments in {time.monotonic() - t0:.1f} s")
    hub = LocalHub(run, servers, password=pairs[0][1].password)
    args.hub = hub
    await hub.start()
    for _, lk, op in pairs:
        for u in (lk, op):
            u.password = hub.password
            u.token = await hub.user_token(u)
    browser = None
    if args.browser != "none":
        from .browser import Browser

        browser = Browser(hub, log, args.artifacts)
        await browser.start()
    sem = asyncio.Semaphore(args.parallel)

    async def run_pair(a: Attempt | None, lk: User, op: User) -> Row:
        async with sem:
            name = a.id if a else "baseline"
            log(f"proof: {name}")
            b = browser if (a is None or args.browser == "all" or (a.browser and args.browser == "some")) else None
            outcomes = await asyncio.gather(run_attempt(hub, lk, a, log, b), run_attempt(hub, op, a, log, b),
                                            return_exceptions=True)
            lo, oo = (o if isinstance(o, Outcome) else Outcome(error=f"{type(o).__name__}: {o}")
                      for o in outcomes)
            log(f"proof: {name} done ({lo.seconds} s, {oo.seconds} s)")
            return Row(name, a.title if a else "no attempt", lo, oo, a)

    try:
        # The baseline first: both installs must hold before anything is tried.
        rows = [await run_pair(*pairs[0])]
        rows += await asyncio.gather(*(run_pair(*p) for p in pairs[1:]))
    finally:
        if browser:
            await browser.stop()
    failures = print_table(rows)
    with open(os.path.join(run, "results.json"), "w") as f:
        json.dump({r.id: {"locked": r.locked.__dict__, "open": r.open.__dict__} for r in rows}, f, indent=1)
    if args.artifacts:
        shutil.copy(os.path.join(run, "results.json"), args.artifacts)
    print(f"\nproof: {len(selected)} attempts, {failures} failures, {time.monotonic() - t0:.0f} s")
    return 1 if failures else 0


def kill_user_processes(uid: int) -> None:
    """SIGKILL, by pid, every process of a user this run created."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        except (OSError, StopIteration):
            continue
        if str(uid) in uids:
            try:
                os.kill(int(pid), 9)
            except OSError:
                pass


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m proof")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--browser", choices=["none", "some", "all"], default="none",
                   help="check the real JupyterLab in Chromium: for the baseline and the attempts marked "
                        "for it (some), or after every attempt (all)")
    p.add_argument("--ci", action="store_true", help="only the attempts marked for CI")
    p.add_argument("--only", nargs="*", help="attempt ids")
    p.add_argument("--parallel", type=int, default=3, help="attempts run at once (each: two servers)")
    p.add_argument("--artifacts", help="directory for screenshots and results.json")
    args = p.parse_args()
    if args.artifacts:
        os.makedirs(args.artifacts, exist_ok=True)
    args.cleanup_users = []
    args.hub = None
    # SIGTERM (a CI timeout, make interrupted) still removes the users,
    # processes and files made so far: the finally below runs.
    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the cleanup must not be cut short
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        return asyncio.run(main_async(args))
    finally:
        if args.hub:
            args.hub.stop()
        for name in args.cleanup_users:
            try:
                uid = pwd.getpwnam(name).pw_uid
            except KeyError:
                continue
            kill_user_processes(uid)
            subprocess.run(["userdel", "--force", name], capture_output=True)
            remove_outside_home(name)
        if os.environ.get("HWNB_PROOF_KEEP") != "1":
            shutil.rmtree(args.run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
