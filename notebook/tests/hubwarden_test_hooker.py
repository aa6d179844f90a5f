"""A server extension for the tests: loads after hubwarden_notebook
(alphabetical order) and sets page_config_hook as JupyterHub's singleuser
extension does; and an authorizer that refuses the kernels API."""

from jupyter_server.auth.authorizer import AllowAllAuthorizer


def _jupyter_server_extension_points():
    return [{"module": "hubwarden_test_hooker"}]


def _load_jupyter_server_extension(serverapp):
    def hook(handler, page_config):
        page_config["hookerWasHere"] = True
        return page_config

    serverapp.web_app.settings["page_config_hook"] = hook


class NoKernelsAuthorizer(AllowAllAuthorizer):
    def is_authorized(self, handler, user, action, resource):
        return resource != "kernels"
