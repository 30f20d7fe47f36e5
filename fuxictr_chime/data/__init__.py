"""Stage 0: behavior logs, time split, preparers, LongCTR-layout writer and loader."""
