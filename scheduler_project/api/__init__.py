"""The DRF kit every app's API shares: errors, body limits, pagination, schema responses, strict fields
and filters. It knows no app: jobs, nodes, monitoring and accounts import it, it imports none of them."""
