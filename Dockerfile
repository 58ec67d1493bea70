# Minimal image for now; the hardened multi-stage build comes with the Kubernetes work.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements/ requirements/
RUN pip install --no-cache-dir -r requirements/base.txt
COPY . .
USER 10001
CMD ["gunicorn", "catga_site.wsgi:application", "--bind", "0.0.0.0:8000"]
