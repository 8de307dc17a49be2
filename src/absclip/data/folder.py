"""Any ImageFolder-style directory: one sub-folder per class, sorted; the folder name is the class name."""

from __future__ import annotations

from .base import DatasetRequest, LabelledImages, class_folders, folder_samples, register_dataset


@register_dataset("folder", layout="ROOT/<class name>/<image> (one folder per class; '_' reads as a space)")
def load_folder(req: DatasetRequest) -> LabelledImages:
    directory = req.find_dir([req.root], lambda d: bool(class_folders(d)), "class folders")
    folders = class_folders(directory)
    samples = folder_samples(req, directory, folders)
    return req.make(samples, req.resolve_classes(len(folders), folders))
