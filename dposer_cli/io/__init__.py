"""File formats: pose/motion npz, keypoint JSON, media, reports. numpy/json + core only."""
