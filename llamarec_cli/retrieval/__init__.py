"""Stage 1: sequential retrievers (LRURec by default), their training and candidate export."""
