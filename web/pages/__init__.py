"""Server-rendered pages: the tenant's billing portal and the operators' console, one blueprint each."""
