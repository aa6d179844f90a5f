#!/usr/bin/env bash
# Captures the requests JupyterLab 4.5.8 (and nbclassic 1.3.3) sends while a
# user works, for the guard's policy table (../jupyterlab-4.5.8-traffic.jsonl).
# Run as root on the development machine after `make setup` (the singleuser
# environment) with Debian's chromium installed:
#
#   guard/testdata/capture/capture.sh guard/testdata/jupyterlab-4.5.8-traffic.jsonl
#
# It makes a network namespace and a user of its own (both named after this
# shell's pid, removed on exit), fills the user's home with a notebook with
# plots, a CSV, a script, an image, runs jupyter-lab there as that user
# under the base URL a JupyterHub user "jane doe" gets (/user/jane%20doe/),
# and drives headless Chromium inside the namespace through the steps of
# drive.py. Nothing leaves the namespace.
set -euo pipefail
out=$(realpath -m "${1:?usage: capture.sh OUT.jsonl}")
here=$(dirname "$(realpath "$0")")
venv=${HUBWARDEN_VENV_ROOT:-/opt/hubwarden/venv}/singleuser
ns=hwcap-$$
user=hwcap$$
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
base=/user/jane%20doe/
lab=""
cleanup() {
  [ -n "$lab" ] && kill "$lab" 2>/dev/null || true
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  pkill -KILL -u "$user" 2>/dev/null || true
  id "$user" >/dev/null 2>&1 && userdel -r "$user" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
useradd -m -s /bin/bash -c "hubwarden guard capture" "$user"
home=$(getent passwd "$user" | cut -d: -f6)
runuser -u "$user" -- env HOME="$home" "$venv/bin/python" - <<'PY'
import os, nbformat
os.chdir(os.environ["HOME"])
os.makedirs("sub", exist_ok=True)
cells = [nbformat.v4.new_markdown_cell("# Plots"),
         nbformat.v4.new_code_cell("import numpy as np\nimport matplotlib\nimport matplotlib.pyplot as plt\nx = np.linspace(0, 10, 200)"),
         nbformat.v4.new_code_cell("plt.plot(x, np.sin(x)); plt.title('sin'); plt.show()"),
         nbformat.v4.new_code_cell("plt.hist(np.random.default_rng(1).normal(size=1000), bins=40); plt.show()"),
         nbformat.v4.new_code_cell("print('rows:', 3)")]
nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), "plots.ipynb")
nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), "sub/inner.ipynb")
open("data.csv", "w").write("id,name,salary\n1,ada,100\n2,grace,120\n")
open("data2.csv", "w").write("id,secret\n1,hunter2\n")
open("script.py", "w").write("print('hello')\n")
open("README.md", "w").write("# Project\n")
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.plot([1, 2, 3]); plt.savefig("image.png")
PY
runuser -u "$user" -- env HOME="$home" "$venv/bin/jupyter-nbconvert" --to notebook --execute --inplace "$home/plots.ipynb" >/dev/null 2>&1
ip netns exec "$ns" runuser -u "$user" -- env HOME="$home" PATH="$venv/bin:/usr/bin:/bin" \
  "$venv/bin/jupyter-lab" --no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port=8888 \
  --ServerApp.base_url="$base" --IdentityProvider.token="$token" --ServerApp.root_dir="$home" \
  --LabApp.expose_app_in_browser=True --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
  >"$out.lab.log" 2>&1 &
lab=$!
for _ in $(seq 100); do
  ip netns exec "$ns" /usr/bin/python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8888${base}api', timeout=1)" 2>/dev/null && break
  sleep 0.3
done
ip netns exec "$ns" /usr/bin/python3 "$here/drive.py" "http://127.0.0.1:8888${base}" "$token" "$out"
rm -f "$out.lab.log"
