"""landlockconfig's own schema, to check that exported (and learned) policies are in its format."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

# landlock-lsm/landlockconfig, schema/landlockconfig.json (commit 1b3da07, Apache-2.0 OR MIT):
# the JSON form of the format. Its TOML form uses the same structure with snake_case keys
# (src/parser.rs converts TomlConfig into JsonConfig), so a TOML file is checked by renaming
# those keys. Kept here because tests run offline.
LANDLOCKCONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "definitions": {
        "uint64": {"type": "integer", "minimum": 0, "maximum": 18446744073709551615},
        "abi": {"type": "integer", "minimum": 1, "maximum": 2147483647},
        "accessFs": {
            "type": "string",
            "enum": [
                "abi.all", "abi.read_execute", "abi.read_write", "execute", "write_file",
                "read_file", "read_dir", "remove_dir", "remove_file", "make_char", "make_dir",
                "make_reg", "make_sock", "make_fifo", "make_block", "make_sym", "refer",
                "truncate", "ioctl_dev",
            ],
        },
        "accessNet": {"type": "string", "enum": ["abi.all", "bind_tcp", "connect_tcp"]},
        "scope": {"type": "string", "enum": ["abi.all", "abstract_unix_socket", "signal"]},
    },
    "properties": {
        "abi": {"$ref": "#/definitions/abi"},
        "variable": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "literal": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                },
                "required": ["name"], "additionalProperties": False,
            },
        },
        "ruleset": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "handledAccessFs": {"type": "array", "minItems": 1,
                                        "items": {"$ref": "#/definitions/accessFs"}},
                    "handledAccessNet": {"type": "array", "minItems": 1,
                                         "items": {"$ref": "#/definitions/accessNet"}},
                    "scoped": {"type": "array", "minItems": 1,
                               "items": {"$ref": "#/definitions/scope"}},
                },
                "minProperties": 1, "additionalProperties": False,
            },
        },
        "pathBeneath": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "allowedAccess": {"type": "array", "minItems": 1,
                                      "items": {"$ref": "#/definitions/accessFs"}},
                    "parent": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                },
                "required": ["allowedAccess", "parent"], "additionalProperties": False,
            },
        },
        "netPort": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "allowedAccess": {"type": "array", "minItems": 1,
                                      "items": {"$ref": "#/definitions/accessNet"}},
                    "port": {"type": "array", "minItems": 1,
                             "items": {"$ref": "#/definitions/uint64"}},
                },
                "required": ["allowedAccess", "port"], "additionalProperties": False,
            },
        },
    },
    "anyOf": [
        {"required": ["variable"]}, {"required": ["ruleset"]},
        {"required": ["pathBeneath"]}, {"required": ["netPort"]},
    ],
    "additionalProperties": False,
}  # fmt: skip

TOML_TO_JSON_KEYS = {
    "path_beneath": "pathBeneath",
    "net_port": "netPort",
    "allowed_access": "allowedAccess",
    "handled_access_fs": "handledAccessFs",
    "handled_access_net": "handledAccessNet",
}


def as_json_form(value: object) -> object:
    if isinstance(value, dict):
        return {TOML_TO_JSON_KEYS.get(k, k): as_json_form(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json_form(v) for v in value]
    return value


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,),
}  # fmt: skip


def schema_errors(value: object, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """The draft-07 keywords the schema above uses; each error names where it is."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/definitions/")
        return schema_errors(value, LANDLOCKCONFIG_SCHEMA["definitions"][name], path)
    if "type" in schema and (
        not isinstance(value, _TYPES[schema["type"]]) or isinstance(value, bool)
    ):
        return [f"{path}: expected {schema['type']}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of the names")
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        errors.append(f"{path}: {value} out of range")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: too few items")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if len(value) < schema.get("minProperties", 0):
            errors.append(f"{path}: too few keys")
        errors += [
            f"{path}: missing {key}" for key in schema.get("required", ()) if key not in value
        ]
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], f"{path}.{key}")
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{path}: unknown key {key!r}")
    if "anyOf" in schema and all(schema_errors(value, s, path) for s in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    return errors


def landlockconfig_errors(text: str) -> list[str]:
    return schema_errors(as_json_form(tomllib.loads(text)), LANDLOCKCONFIG_SCHEMA)
