"""Documents a finance team accepts: issuers and their gapless number series, customers' billing
details, tax treatments, receipts for paid credit purchases, and Parquet exports of the ledger."""
