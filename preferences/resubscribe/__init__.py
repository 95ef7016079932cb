"""The re-subscribe request queue (docs/design.md, rule 8): requests.py is its bookkeeping,
subscribers.py the Marketing Cloud calls staff wait for, views.py and forms.py its pages."""
