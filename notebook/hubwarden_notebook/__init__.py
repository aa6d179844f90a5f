"""hubwarden's notebook side: a jupyter-server extension for any JupyterHub.

- contents: notebooks only, validated with nbformat, under a size cap;
  metadata for everything (listings work);
- every route that serves files without the contents manager closed
  (/files/ through the gate; nbconvert and kernelspec files refused by an
  Authorizer in front of the server's own);
- JupyterLab's and Notebook 7's download plugins disabled and locked by the
  server in every page config;
- a start-up check: the server refuses to start without the lockdown.

Enabled by installing the package (jupyter_server_config.d), or with
``c.ServerApp.jpserver_extensions = {"hubwarden_notebook": True}``.
"""

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    return [{"module": "hubwarden_notebook"}]


def _link_jupyter_server_extension(serverapp):
    from .extension import link

    link(serverapp)


def _load_jupyter_server_extension(serverapp):
    from .extension import load

    load(serverapp)
