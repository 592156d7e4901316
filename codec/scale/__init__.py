"""Scale-out on Ray (`pip install ncodec[distributed]`): many clips at once (`clips.encode_many`), or one long video
as segments fitted in parallel (`segments.encode_segmented`, decoded in parallel by `segments.decode_parallel`).

    ray_tasks   Ray itself: the session, resources per task, the encode and render tasks, the progress display
    manifest    what a rerun skips: hashes of inputs, options and outputs; the inputs shipped to the tasks
    clips       many inputs -> <folder>/<name>.ncb
    segments    one input -> one segmented file (format: codec/video/segmented.py)
"""
