"""The operations dashboard: throughput, handling times, backlog, dead letters, contributed panels.

`stats` reads the history (a fixed, small number of queries whatever its size),
`chart` turns the per-minute counts into SVG geometry (no JavaScript, no CDN),
`views` renders the admin page.
"""
