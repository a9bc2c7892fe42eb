"""Deliver: committed CRM changes out to CRM APIs, rate-limited, retried, dead-lettered."""
