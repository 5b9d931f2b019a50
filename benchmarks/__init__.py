"""Side-by-side speed measurements that print ratios against a baseline run."""
