"""CUB and folder readers on tiny fixtures written with Pillow (40x40 images,
image_size 40 unless cropping, so pixel counts can be worked out by hand)."""

import numpy as np
import pytest
import torch
from PIL import Image

from kdlens.data import DATASETS, CubDataset, MaskedImageFolder
from kdlens.data.imageio import box_mask, scaled_box

RED, GREEN, BLUE = (220, 30, 30), (30, 220, 30), (30, 30, 220)
BOX = (10.0, 5.0, 20.0, 10.0)  # x, y, w, h: columns 10..29, rows 5..14 -> 200 pixels


def _picture(colour, box=BOX):
    """A flat image of ``colour`` with a green box interior."""
    pixels = np.full((40, 40, 3), colour, dtype=np.uint8)
    x, y, w, h = (int(v) for v in box)
    pixels[y:y + h, x:x + w] = GREEN
    return Image.fromarray(pixels)


@pytest.fixture
def cub_root(tmp_path):
    """6 images, 2 classes; train = ids 1, 2, 4, 5; segmentations only for class 1."""
    root = tmp_path / "CUB_200_2011"
    rows = {"images": [], "labels": [], "split": [], "boxes": []}
    for i in range(1, 7):
        label = 1 if i <= 3 else 2
        rel = f"{label:03d}.{'Red' if label == 1 else 'Blue'}_bird/bird_{i}.jpg"
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        _picture(RED if label == 1 else BLUE).save(root / "images" / rel, quality=95)
        if label == 1:  # soft mask: rows 0..9 at 200 (foreground), rows 10..19 at 127 (not)
            seg = np.zeros((40, 40), dtype=np.uint8)
            seg[:10], seg[10:20] = 200, 127
            path = (root / "segmentations" / rel).with_suffix(".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(seg).save(path)
        rows["images"].append(f"{i} {rel}")
        rows["labels"].append(f"{i} {label}")
        rows["split"].append(f"{i} {0 if i in (3, 6) else 1}")
        rows["boxes"].append(f"{i} " + " ".join(map(str, BOX)))
    for name, key in [("images", "images"), ("image_class_labels", "labels"),
                      ("train_test_split", "split"), ("bounding_boxes", "boxes")]:
        (root / f"{name}.txt").write_text("\n".join(rows[key]) + "\n")
    return root


def test_cub_labels_splits_and_classes(cub_root):
    train, test = CubDataset(cub_root, "train", image_size=40), CubDataset(cub_root, "test", image_size=40)
    assert len(train) == 4 and len(test) == 2
    assert train.labels.tolist() == [0, 0, 1, 1] and test.labels.tolist() == [0, 1]
    assert train.classes == ["001.Red_bird", "002.Blue_bird"]  # folder names without classes.txt
    (cub_root / "classes.txt").write_text("1 Red bird\n2 Blue bird\n")
    assert CubDataset(cub_root).classes == ["Red bird", "Blue bird"]
    sample = train[3]
    assert sample.image.shape == (3, 40, 40) and sample.image.dtype == torch.float32
    assert sample.mask.shape == (40, 40) and sample.mask.dtype == torch.bool and sample.label == 1
    assert train.mean == (0.485, 0.456, 0.406) and train.std == (0.229, 0.224, 0.225)


def test_cub_mask_sources(cub_root):
    auto = CubDataset(cub_root, "train", image_size=40)
    assert auto[0].mask.sum() == 400  # segmentation: rows 0..9 only, 127 is below the threshold
    assert auto[0].mask[:10].all()
    assert auto[2].mask.sum() == 200  # class 2 has no segmentation: the box
    assert auto[2].mask[5:15, 10:30].all()
    bbox = CubDataset(cub_root, "train", image_size=40, mask_source="bbox")
    assert bbox[0].mask.sum() == 200
    with pytest.raises(FileNotFoundError, match="bird_4.png"):
        CubDataset(cub_root, "train", mask_source="segmentation")


def test_cub_segmentation_only_split_needs_no_boxes(cub_root):
    (cub_root / "images" / "002.Blue_bird" / "bird_6.jpg").unlink()
    (cub_root / "bounding_boxes.txt").unlink()
    (cub_root / "train_test_split.txt").write_text("1 1\n2 1\n3 0\n4 1\n5 1\n6 1\n")
    test = CubDataset(cub_root, "test", image_size=40, mask_source="segmentation")
    assert len(test) == 1 and test[0].mask.sum() == 400


def test_cub_bbox_crop(cub_root):
    assert scaled_box(BOX, 1.0, 40, 40) == (10, 5, 30, 15)
    assert scaled_box(BOX, 1.5, 40, 40) == (5, 2, 35, 18)  # centre (20, 10), half sizes 15 x 7.5
    assert scaled_box((30.0, 30.0, 10.0, 10.0), 1.5, 40, 40) == (27, 27, 40, 40)  # clamped
    crop = CubDataset(cub_root, "train", image_size=40, mask_source="bbox", bbox_crop=1.0)
    sample = crop[2]
    assert sample.mask.all()  # the crop is the box
    colour = sample.image * torch.tensor(crop.std).view(3, 1, 1) + torch.tensor(crop.mean).view(3, 1, 1)
    assert torch.allclose(colour[:, 4:-4, 4:-4].mean(dim=(1, 2)), torch.tensor(GREEN) / 255, atol=0.05)
    seg_crop = CubDataset(cub_root, "train", image_size=40, bbox_crop=1.0)
    assert seg_crop[0].mask.sum() == 800  # rows 5..9 of 10 cropped rows, scaled x4 -> 20 x 40
    assert seg_crop[0].mask[:20].all()


def test_cub_missing_files(cub_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CubDataset(tmp_path / "nowhere")
    (cub_root / "images" / "001.Red_bird" / "bird_2.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="bird_2.jpg"):
        CubDataset(cub_root)
    (cub_root / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="image_class_labels.txt") as error:
        CubDataset(cub_root)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="mask_source"):
        CubDataset(cub_root, mask_source="grabcut")


def test_box_mask_counts_pixel_centres():
    assert box_mask(BOX, 40, 40).sum() == 200
    assert box_mask((0.4, 0.0, 1.0, 1.0), 4, 4).sum() == 1  # only pixel (0, 0)'s centre is inside


@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "folder"
    files = {"train": {"cat": ["a.png", "b.jpg"], "dog": ["c.png"]}, "test": {"cat": ["d.png"], "dog": ["e.bmp"]}}
    for split, classes in files.items():
        for name, images in classes.items():
            for index, file in enumerate(images):
                (root / "images" / split / name).mkdir(parents=True, exist_ok=True)
                (root / "masks" / split / name).mkdir(parents=True, exist_ok=True)
                _picture(RED).save(root / "images" / split / name / file)
                if index == 0:  # palette-free index mask: value 1 on a 10 x 10 square
                    mask = np.zeros((40, 40), dtype=np.uint8)
                    mask[0:10, 0:10] = 1
                    Image.fromarray(mask).save(root / "masks" / split / name / f"{file.split('.')[0]}.png")
                else:  # an RGB mask whose only nonzero channel is blue still counts
                    mask = np.zeros((40, 40, 3), dtype=np.uint8)
                    mask[20:40, 0:10, 2] = 1
                    Image.fromarray(mask).save(root / "masks" / split / name / f"{file.split('.')[0]}.png")
    return root


def test_folder_reads_labels_and_masks(folder_root):
    train = DATASETS.build("folder", split="train", root=folder_root, image_size=40)
    test = MaskedImageFolder(folder_root, "test", image_size=40)
    assert train.classes == test.classes == ["cat", "dog"]
    assert train.labels.tolist() == [0, 0, 1] and test.labels.tolist() == [0, 1]
    assert [p.name for p in train.image_paths] == ["a.png", "b.jpg", "c.png"]
    assert train[0].mask.sum() == 100 and train[0].mask[:10, :10].all()
    assert train[1].mask.sum() == 200
    small = MaskedImageFolder(folder_root, "test", image_size=20)
    assert small[1].image.shape == (3, 20, 20) and small[1].mask.sum() == 25  # nearest, halved


def test_folder_errors(folder_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MaskedImageFolder(tmp_path / "nowhere")
    (folder_root / "images" / "test" / "bird").mkdir()
    with pytest.raises(ValueError, match="bird"):
        MaskedImageFolder(folder_root, "test")
    (folder_root / "masks" / "train" / "dog" / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match="c.png") as error:
        MaskedImageFolder(folder_root, "train")
    assert "\n" not in str(error.value)


def test_cub_malformed_or_incomplete_metadata(cub_root):
    (cub_root / "bounding_boxes.txt").write_text("1 10 5 20 10\n")
    with pytest.raises(ValueError, match="bounding_boxes.txt' has no line for image id 2"):
        CubDataset(cub_root, mask_source="bbox")
    (cub_root / "train_test_split.txt").write_text("1 1\nsix 0\n")
    with pytest.raises(ValueError, match="line 2"):
        CubDataset(cub_root)
