"""Low-rank family: svd, svd_llm (whitened, truncation-aware) and eora (low-rank error compensation)."""
