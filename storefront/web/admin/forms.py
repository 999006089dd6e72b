"""The admin area's forms (CSRF from Flask-WTF, like every form of the site)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    EmailField,
    FloatField,
    HiddenField,
    IntegerField,
    PasswordField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, NumberRange, Optional


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


class LoginForm(FlaskForm):
    """Email and password."""

    email = EmailField(
        "Email",
        validators=[DataRequired(message="Enter your email."), Length(max=255)],
        filters=[_strip],
    )
    password = PasswordField(
        "Password", validators=[DataRequired(message="Enter your password."), Length(max=512)]
    )
    next = HiddenField()


class ConfirmForm(FlaskForm):
    """A confirmation: its one-time id makes a second press of the button do nothing."""

    request_id = HiddenField()


class RefundForm(ConfirmForm):
    """How much to refund, and why."""

    amount = StringField("Amount", validators=[Optional(), Length(max=20)], filters=[_strip])
    reason = TextAreaField(
        "Reason",
        validators=[DataRequired(message="Give a reason for the refund."), Length(max=500)],
        filters=[_strip],
    )


class ExtendForm(ConfirmForm):
    """By how many hours to extend a link."""

    hours = IntegerField(
        "Extend by (hours)",
        default=24,
        validators=[
            DataRequired(message="Enter a number of hours."),
            NumberRange(1, 168, message="Extend by 1 to 168 hours."),
        ],
    )


class PostForm(FlaskForm):
    """A post's title, slug and text."""

    title = StringField(
        "Title",
        validators=[DataRequired(message="Give the post a title."), Length(max=255)],
        filters=[_strip],
    )
    slug = StringField("Slug (address)", validators=[Optional(), Length(max=200)], filters=[_strip])
    body = TextAreaField("Text", validators=[Optional(), Length(max=20000)])


class ImageForm(FlaskForm):
    """An image's title, alt text and whether it is for sale."""

    title = StringField("Title", validators=[Optional(), Length(max=255)], filters=[_strip])
    alt_text = StringField(
        "Alt text (describes the image for people who can't see it)",
        validators=[DataRequired(message="Describe the image in the alt text."), Length(max=500)],
        filters=[_strip],
    )
    for_sale = BooleanField("For sale", default=True)
    focus_x = FloatField(
        "Sample focus, across (0 left – 1 right)",
        validators=[Optional(), NumberRange(0, 1, message="A focus point is from 0 to 1.")],
    )
    focus_y = FloatField(
        "Sample focus, down (0 top – 1 bottom)",
        validators=[Optional(), NumberRange(0, 1, message="A focus point is from 0 to 1.")],
    )


class UploadForm(ImageForm):
    """A new image for a post."""

    image = FileField("Image file (JPEG, PNG or WebP)", validators=[FileRequired("Choose a file.")])
