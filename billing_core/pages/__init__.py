"""What the tenant's billing portal and the operators' console need beyond the API's own use cases:
sessions opened from a link, spend over time, operator-wide reads, and the record of page actions."""
