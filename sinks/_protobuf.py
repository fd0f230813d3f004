"""Protobuf message classes declared in a few lines, for wire formats no maintained package ships.

Loki's push request (``logproto.PushRequest``) and the ``google.rpc.Status`` an OTLP/HTTP server
answers errors with are small, stable messages, but no maintained PyPI package ships their Python
classes (Loki publishes only Go code; ``googleapis-common-protos`` would be one more dependency for a
two-field message). Declaring them through protobuf's own descriptor API keeps the encoding and
decoding in the ``protobuf`` library (already required by ``opentelemetry-proto``) instead of a
hand-written wire encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# field kinds used by the messages declared here (descriptor.proto's FieldDescriptorProto.Type)
STRING, MESSAGE, UINT64, INT32, INT64 = 9, 11, 4, 5, 3
_REPEATED, _OPTIONAL = 3, 1

# (name, number, kind, repeated, message type name or "")
Field = tuple[str, int, int, bool, str]


def message_classes(file_name: str, package: str, messages: Mapping[str, Sequence[Field]],
                    dependencies: Sequence[str] = ()) -> dict[str, Any]:
    """Build the Python classes of ``messages`` (name -> fields) in a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

    proto = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax="proto3")
    proto.dependency.extend(dependencies)
    for name, fields in messages.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, repeated, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=kind,
                                      label=_REPEATED if repeated else _OPTIONAL)
            if type_name:
                field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with another library's declarations
    if "google/protobuf/timestamp.proto" in dependencies:
        pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
            for name in messages}
