"""``sdft compare``: the two-arm run (``compare``) and its forgetting report (``report``)."""
