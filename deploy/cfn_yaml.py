"""template.yaml as plain data: CloudFormation's short tags (!Ref, !If, !Sub...) read as long JSON forms.

The one reader for the local runtime (handler, environment, logging) and the template tests. Needs
PyYAML (dev extras); the Lambda artifact never imports it.
"""

from __future__ import annotations

import yaml


class CfnLoader(yaml.SafeLoader):
    """A SafeLoader that reads ``!Ref X`` as ``{"Ref": "X"}`` and ``!If [...]`` as ``{"Fn::If": [...]}``."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_cfn(text: str) -> dict:
    return yaml.load(text, Loader=CfnLoader)  # noqa: S506 (a SafeLoader subclass)
