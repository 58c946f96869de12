"""Auto top-up through Stripe: a tenant's rule (`rules`), the attempts to pay and their guards
(`attempts`), and the one Stripe call (`payment`). See the README section "Auto top-up"."""
