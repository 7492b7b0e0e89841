"""MkDocs hook (mkdocs.yml: ``hooks``): sgdlab's docstrings name things with Sphinx roles
(``:func:`run_race```); the API pages show the name alone, as code, without the role."""

import re

_ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|obj|exc):(?=<code|<a )")


def on_page_content(html, **kwargs):
    return _ROLE.sub("", html)
