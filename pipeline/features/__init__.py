"""Feature cache: CLIP tokens, optical-flow magnitude, EnCodec codes, in Parquet shards."""
