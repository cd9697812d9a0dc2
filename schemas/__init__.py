"""The versioned m3w document schema: dataclasses, JSON codec, Arrow schema, validator."""
from schemas.document import (  # noqa: F401
    SCHEMA_VERSION,
    Document,
    ImageNode,
    Node,
    Provenance,
    TextNode,
    dumps,
    from_json,
    make_doc_id,
    to_json,
    validate,
)
