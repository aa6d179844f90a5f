"""Render user pods the way a Zero to JupyterHub 4.4 hub does.

Run with the hub environment's python (KubeSpawner 7.0.0, kubernetes-asyncio
36.1.0, JupyterHub 5.5.0):

    python render.py CHART_DIR VALUES_JSON OUT_JSON

CHART_DIR holds the chart's hub files, unchanged: hub-jupyterhub_config.py
(jupyterhub/files/hub/jupyterhub_config.py) and hub-z2jh.py (z2jh.py).
VALUES_JSON is the values the chart's hub Secret would carry (chart defaults
merged with the overlays, plus Chart and Release).

The chart mounts its files under /usr/local/etc/jupyterhub; this script
copies them into a scratch directory laid out the same way and changes that
one path prefix in them, nothing else, so that it needs no root and touches
nothing outside the scratch directory. It then loads the chart's config with
traitlets' own loader, builds KubeSpawners for a user whose name needs
escaping (a default and a named server), calls get_pod_manifest() (which
calls kubespawner.objects.make_pod) and writes the pods as the Kubernetes API
would receive them (ApiClient.sanitize_for_serialization). Nothing talks to
a cluster: the kubeconfig it writes names an address of 198.18.0.0/15 that
nothing listens on, and making a manifest sends no request.
"""

import asyncio
import json
import os
import sys
import tempfile

PREFIX = "/usr/local/etc/jupyterhub/"
USER = "alice.smith@example.org"  # '.' and '@' need escaping in a slug
SERVER = "data.prep"  # so does '.' in a server name


class Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def copy_with_prefix(src, dst, new_prefix):
    text = open(src).read()
    n = text.count(PREFIX)
    if n == 0:
        sys.exit(f"render: {src} does not mention {PREFIX}: not the chart's file?")
    with open(dst, "w") as f:
        f.write(text.replace(PREFIX, new_prefix))
    return n


def main(chart_dir, values_path, out_path):
    values = json.load(open(values_path))
    scratch = tempfile.mkdtemp(prefix="z2jh-render-")
    root = scratch + "/"
    for d in ("secret", "config"):
        os.mkdir(os.path.join(scratch, d))
    import yaml  # the hub image has pyyaml; z2jh.py reads YAML

    with open(os.path.join(scratch, "secret", "values.yaml"), "w") as f:
        yaml.safe_dump(values, f)
    # The chart's Secret and ConfigMap keys the config reads.
    secrets = {
        "hub.config.JupyterHub.cookie_secret": "0" * 64,
        "hub.config.CryptKeeper.keys": "1" * 64,
    }
    for k, v in secrets.items():
        open(os.path.join(scratch, "secret", k), "w").write(v)
    for name in ("hub", "proxy-api", "proxy-public", "proxy-http", "singleuser", "image-pull-secret",
                 "user-scheduler", "priority"):
        open(os.path.join(scratch, "config", name), "w").write(name)
    os.environ.update({"HUB_SERVICE_PORT": "8081", "PROXY_API_SERVICE_PORT": "8001",
                       "POD_NAMESPACE": "jhub"})
    kubeconfig = os.path.join(scratch, "kubeconfig")
    open(kubeconfig, "w").write(
        "apiVersion: v1\nkind: Config\ncurrent-context: render\n"
        "clusters: [{name: render, cluster: {server: 'https://198.18.0.1:6443'}}]\n"
        "contexts: [{name: render, context: {cluster: render, user: render}}]\n"
        "users: [{name: render, user: {token: render}}]\n")
    os.environ["KUBECONFIG"] = kubeconfig

    n = copy_with_prefix(os.path.join(chart_dir, "hub-jupyterhub_config.py"),
                         os.path.join(scratch, "jupyterhub_config.py"), root)
    n += copy_with_prefix(os.path.join(chart_dir, "hub-z2jh.py"), os.path.join(scratch, "z2jh.py"), root)
    print(f"render: {n} mentions of {PREFIX} changed to {root}", file=sys.stderr)

    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader("jupyterhub_config.py", path=scratch).load_config()

    import jupyterhub
    import kubernetes_asyncio
    from jupyterhub import orm
    import kubespawner
    from kubernetes_asyncio.client import ApiClient

    if cfg.JupyterHub.spawner_class != "kubespawner.KubeSpawner":
        sys.exit(f"render: the chart's config chose {cfg.JupyterHub.spawner_class}, not KubeSpawner")

    hub = Obj(public_host="", url="http://hub:8081/hub/", base_url="/hub/", api_url="http://hub:8081/hub/api",
              ip="", port=8081, connect_url="http://hub:8081/hub/")

    async def render():
        out = []
        api = ApiClient()
        for server in ("", SERVER):
            user = Obj(name=USER, id=7, url=f"/user/{USER}/", admin=False, escaped_name=USER,
                       settings={}, orm_user=None)
            # JupyterHub's Spawner takes its name and server from its ORM
            # row; a real orm.Server, not attached to a database.
            base_url = f"/user/{USER}/{server}/" if server else f"/user/{USER}/"
            orm_spawner = Obj(name=server, last_activity=None,
                              server=orm.Server(proto="http", ip="", port=8888, base_url=base_url,
                                                         cookie_name="jupyterhub-user-render"))
            spawner = kubespawner.KubeSpawner(config=cfg, user=user, hub=hub, orm_spawner=orm_spawner, _mock=True)
            if spawner.name != server:
                sys.exit(f"render: the spawner's name is {spawner.name!r}, want {server!r}")
            spawner.api_token = "render-token"
            spawner.oauth_client_id = "jupyterhub-user-render"
            pod = await spawner.get_pod_manifest()
            out.append({
                "server": server,
                "unescaped_username": USER,
                "unescaped_servername": server,
                "pod": api.sanitize_for_serialization(pod),
            })
        await api.close()
        return out

    pods = asyncio.run(render())
    json.dump({"versions": {"jupyterhub": jupyterhub.__version__, "kubespawner": kubespawner.__version__,
                            "kubernetes_asyncio": kubernetes_asyncio.__version__},
               "pods": pods}, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
