"""keypoints"""
