"""Generated protobuf code of proto/fdx/v1 (proto/gen.sh writes it; do not edit)."""
