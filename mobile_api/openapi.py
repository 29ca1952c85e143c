"""What the published OpenAPI document says beyond apispec's defaults, so that generated
clients get one type per thing and see the rules the service enforces."""

from __future__ import annotations

from typing import Any

from apispec import BasePlugin


class SchemaRulesPlugin(BasePlugin):
    """Add a schema's OPENAPI_RULES (a dict) to its component: rules across fields,
    which no field's own documentation can state."""

    def schema_helper(self, name: str, definition: Any, **kwargs: Any) -> dict[str, Any] | None:
        """The schema's OPENAPI_RULES, merged into the component."""
        rules = getattr(kwargs.get("schema"), "OPENAPI_RULES", None)
        return dict(rules) if rules else None


def nullable_enum_as_component(converter: Any, field: Any, ret: dict[str, Any], **_: Any) -> Any:
    """Document a nullable enum as a reference to one named enum schema.

    apispec writes it inline with null among the values, which generators such as
    openapi-python-client turn into several identical enum classes per property.
    The schema is named after the field (push_permission: PushPermission), so every
    schema with that field shares one.
    """
    values = ret.get("enum")
    if not values or not ret.get("nullable") or not field.name:
        return {}
    name = "".join(part.title() for part in field.name.split("_"))
    definition = {"type": ret.get("type", "string"), "enum": [v for v in values if v is not None]}
    components = converter.spec.components
    if name not in components.schemas:
        components.schema(name, definition)
    elif components.schemas[name] != definition:
        return {}  # another enum holds the name: keep apispec's inline form, valid still
    del ret["enum"]
    ret.pop("type", None)
    ret["allOf"] = [components.get_ref("schema", name)]
    return {}


def nullable_ref_as_all_of(converter: Any, field: Any, ret: dict[str, Any], **_: Any) -> Any:
    """Document a nullable nested schema as `nullable` + `allOf: [$ref]`.

    apispec writes `anyOf: [{type: object, nullable: true}, {$ref}]`, from which
    generators make an extra, empty class.
    """
    any_of = ret.get("anyOf")
    if isinstance(any_of, list) and len(any_of) == 2:
        refs = [item for item in any_of if "$ref" in item]
        if len(refs) == 1 and {"type": "object", "nullable": True} in any_of:
            del ret["anyOf"]
            ret.update(nullable=True, allOf=refs)
    return {}


def declared_additional_properties(
    converter: Any, field: Any, ret: dict[str, Any], **_: Any
) -> Any:
    """A Dict field's `additionalProperties` metadata wins over the one apispec derives
    from its value field (a Raw value field says nothing of the values allowed)."""
    declared = field.metadata.get("additionalProperties")
    if declared is not None:
        ret["additionalProperties"] = declared
    return {}


ATTRIBUTE_FUNCTIONS = (
    nullable_enum_as_component,
    nullable_ref_as_all_of,
    declared_additional_properties,
)
